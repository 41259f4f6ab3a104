"""Suite documents rendered into requests: Jinja2 templates, few-shot examples, chat or text.

Rendering is strict: a template naming a field the row lacks fails for that row only,
and the row is reported as malformed with the field named.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from welip.evaluation._config import SuiteConfig
from welip.evaluation._dataset import Document, Malformed

_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


def render(template: str, variables: dict[str, Any]) -> str:
    """Render a Jinja2 template strictly (a missing variable raises)."""
    return _ENV.from_string(template).render(**variables).strip()


def _choices(expression: str, doc: dict[str, Any]) -> list[str]:
    # lm-eval writes `{{ choices }}`; a bare expression works too.
    expr = expression.strip()
    if expr.startswith("{{") and expr.endswith("}}"):
        expr = expr[2:-2]
    value = _ENV.compile_expression(expr, undefined_to_none=False)(**doc)
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, list) or len(value) < 2:
        raise ValueError("doc_to_choice must give a list of at least two choices")
    return [str(v) for v in value]


def template_hash(cfg: SuiteConfig) -> str:
    """sha256 over everything that shapes a prompt, so runs with equal prompts share it."""
    parts = {
        "mode": cfg.mode,
        "output_type": cfg.output_type,
        "system_prompt": cfg.system_prompt,
        "doc_to_text": cfg.doc_to_text,
        "doc_to_target": cfg.doc_to_target,
        "doc_to_choice": cfg.doc_to_choice,
        "target_delimiter": cfg.target_delimiter,
        "fewshot_delimiter": cfg.fewshot_delimiter,
        "num_fewshot": cfg.num_fewshot,
        "fewshot_path": cfg.fewshot_path,
        "seed": cfg.seed,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class Prompter:
    """Renders documents into samples (plain JSON dicts) for the inference stages.

    Args:
        cfg: The suite.
        fewshot_pool: Solved examples to draw from; the suite's own rows by default
            (a row never serves as its own example).
    """

    def __init__(self, cfg: SuiteConfig, fewshot_pool: list[Document]) -> None:
        self._cfg = cfg
        self._pool = fewshot_pool

    def _fewshot(self, doc: Document) -> list[tuple[str, str]]:
        cfg = self._cfg
        if cfg.num_fewshot == 0:
            return []
        candidates = [d for d in self._pool if d.id != doc.id]
        # Seeded per row: the same suite and seed give every row the same examples.
        rng = random.Random(f"{cfg.seed}:{doc.id}")  # nosec B311 # reproducible few-shot picks, no secret
        picked = rng.sample(candidates, min(cfg.num_fewshot, len(candidates)))
        shots = []
        for example in picked:
            text = render(cfg.doc_to_text, example.doc)
            if cfg.output_type == "multiple_choice":
                choices = _choices(cfg.doc_to_choice or "", example.doc)
                target = choices[self._gold(example.doc, choices)]
            else:
                target = render(cfg.doc_to_target, example.doc)
            shots.append((text, target))
        return shots

    def _gold(self, doc: dict[str, Any], choices: list[str]) -> int:
        target = render(self._cfg.doc_to_target, doc)
        if target.lstrip("-").isdigit():
            index = int(target)
            if not 0 <= index < len(choices):
                raise ValueError(f"target index {index} is outside the {len(choices)} choices")
            return index
        if target not in choices:
            raise ValueError(f"target {target!r} is not one of the choices")
        return choices.index(target)

    def sample(self, doc: Document) -> dict[str, Any]:
        """The request and references for one document.

        Raises:
            TemplateError, ValueError: the document does not fit the templates.
        """
        cfg = self._cfg
        text = render(cfg.doc_to_text, doc.doc)
        target = render(cfg.doc_to_target, doc.doc)
        shots = self._fewshot(doc)
        sample: dict[str, Any] = {"id": doc.id, "row": doc.row, "inputs": text, "target": target}
        if cfg.output_type == "multiple_choice":
            choices = _choices(cfg.doc_to_choice or "", doc.doc)
            context = "".join(f"{q}{cfg.target_delimiter}{a}{cfg.fewshot_delimiter}" for q, a in shots) + text
            sample.update(
                kind="choice",
                context=context,
                choices=choices,
                continuations=[f"{cfg.target_delimiter}{c}" for c in choices],
                gold=self._gold(doc.doc, choices),
            )
            return sample
        if cfg.mode == "chat":
            messages: list[dict[str, str]] = []
            if cfg.system_prompt:
                messages.append({"role": "system", "content": cfg.system_prompt})
            for question, answer in shots:  # few-shot as a multi-turn conversation
                messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            messages.append({"role": "user", "content": text})
            sample.update(kind="generate", messages=messages)
        else:
            prompt = "".join(f"{q}{cfg.target_delimiter}{a}{cfg.fewshot_delimiter}" for q, a in shots) + text
            sample.update(kind="generate", prompt=prompt)
        sample["references"] = {
            m.label: render(m.reference, doc.doc) if m.reference else target
            for m in cfg.metric_list
            if m.metric != "judge"
        }
        judges: dict[str, dict[str, Any]] = {}
        for m in cfg.metric_list:
            if m.judge is not None:
                baseline = render(m.judge.baseline, doc.doc) if m.judge.baseline else None
                judges[m.label] = {"baseline": baseline}
        sample["judges"] = judges
        return sample

    def samples(self, documents: list[Document]) -> tuple[list[dict[str, Any]], list[Malformed]]:
        """Samples for every document that renders; the others, reported by row and id."""
        out: list[dict[str, Any]] = []
        bad: list[Malformed] = []
        for doc in documents:
            try:
                out.append(self.sample(doc))
            except (TemplateError, ValueError, TypeError) as exc:
                bad.append(Malformed(doc.row, doc.id, f"{type(exc).__name__}: {exc}"))
        return out, bad
