"""Batch benchmark: the same chat requests through ``/v1/batches`` and online, same gateway, same run.

    python benchmarks/batch.py --base-url http://127.0.0.1:8000 --model smollm2-135m-instruct
    python benchmarks/batch.py --requests 512 --max-tokens 64 --concurrency 32 --api-key-env WELIP_KEY

Needs a running WeLIP stack whose Ray cluster has its dashboard (Jobs API) up (``make run``
starts one): the batch's Ray Job sends its lines back through the same gateway.

Online: ``--requests`` chat requests at ``--concurrency`` in flight (the OpenAI SDK's
async client). Batch: the same requests as one input file, ``client.batches.create``,
polled every 0.25 s until it runs, then every ``--poll-s`` until it ends. Each request
asks for exactly ``--max-tokens`` tokens (``ignore_eos``); the online and batch prompts
differ in one word so the response cache answers neither from the other.

Reported: output tokens per second of each (completion tokens summed from the answers,
over the wall time from the first request sent, or from ``create``, to the last answer,
or to ``completed``), their ratio (batch / online), and the time from ``create`` to the
batch's ``in_progress`` (its job running; its first requests follow at once). The
results go to stdout and ``benchmarks/results/batch-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import openai

RESULTS = Path(__file__).parent / "results"


def _body(model: str, i: int, kind: str, max_tokens: int) -> dict[str, Any]:
    content = f"Request {i} ({kind}): write a short story about a lighthouse keeper."
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }


async def run_online(client: openai.AsyncOpenAI, args: argparse.Namespace) -> dict[str, Any]:
    """Every request online, ``concurrency`` at a time: output tokens/s."""
    gate = asyncio.Semaphore(args.concurrency)

    async def one(i: int) -> int:
        body = _body(args.model, i, "online", args.max_tokens)
        extra = {"ignore_eos": body.pop("ignore_eos")}
        async with gate:
            answer = await client.chat.completions.create(**body, extra_body=extra)
        return answer.usage.completion_tokens if answer.usage else 0

    start = time.monotonic()
    tokens = sum(await asyncio.gather(*(one(i) for i in range(args.requests))))
    wall_s = time.monotonic() - start
    return {
        "requests": args.requests,
        "output_tokens": tokens,
        "wall_s": wall_s,
        "tokens_per_s": tokens / wall_s,
    }


async def run_batch(client: openai.AsyncOpenAI, args: argparse.Namespace) -> dict[str, Any]:
    """The requests as one batch: output tokens/s from create to completed, and create to in_progress."""
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": _body(args.model, i, "batch", args.max_tokens),
        }
        for i in range(args.requests)
    ]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    upload = await client.files.create(file=("bench.jsonl", content), purpose="batch")
    start = time.monotonic()
    batch = await client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    running_s = None
    while batch.status not in ("completed", "failed", "cancelled", "expired"):
        await asyncio.sleep(0.25 if running_s is None else args.poll_s)
        batch = await client.batches.retrieve(batch.id)
        if running_s is None and batch.status != "validating":
            running_s = time.monotonic() - start
    wall_s = time.monotonic() - start
    if batch.status != "completed" or batch.output_file_id is None:
        raise SystemExit(f"batch {batch.id} ended {batch.status}: {batch.errors}")
    output = (await client.files.content(batch.output_file_id)).content.splitlines()
    tokens = sum(json.loads(row)["response"]["body"]["usage"]["completion_tokens"] for row in output)
    counts = batch.request_counts.model_dump() if batch.request_counts else None
    return {
        "batch_id": batch.id,
        "request_counts": counts,
        "output_tokens": tokens,
        "wall_s": wall_s,
        "tokens_per_s": tokens / wall_s,
        "create_to_in_progress_s": running_s,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    key = os.environ.get(args.api_key_env, "none") if args.api_key_env else "none"
    client = openai.AsyncOpenAI(base_url=f"{args.base_url}/v1", api_key=key, max_retries=0, timeout=3600)
    online = await run_online(client, args)
    batch = await run_batch(client, args)
    return {
        "base_url": args.base_url,
        "model": args.model,
        "max_tokens": args.max_tokens,
        "concurrency": args.concurrency,
        "online": online,
        "batch": batch,
        "tokens_per_s_ratio": batch["tokens_per_s"] / online["tokens_per_s"],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-url", default="http://127.0.0.1:8000", help="The WeLIP gateway.")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="A served chat model.")
    parser.add_argument("--requests", type=int, default=512, help="Chat requests, each way (default 512).")
    parser.add_argument("--max-tokens", type=int, default=64, help="Output tokens per request (default 64).")
    parser.add_argument("--concurrency", type=int, default=32, help="Online requests in flight (default 32).")
    parser.add_argument(
        "--poll-s", type=float, default=1.0, help="Batch polling once it runs (default 1 s; 0.25 s before)."
    )
    parser.add_argument(
        "--api-key-env", default=None, help="Variable holding an API key (with batch, inference)."
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    result = asyncio.run(main_async(parse_args(argv)))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"batch-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"batch / online output tokens/s: {result['tokens_per_s_ratio']:.2f}x; written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
