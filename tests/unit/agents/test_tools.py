"""The tools' bounds: every tool call ends soon, whatever its input, and never stalls the event loop."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from welip.agents import build_tools, calculate

# Each took from seconds to forever on the replica's event loop before the evaluator
# bounded every intermediate (all stay under the old exponent bound of 100).
HOSTILE = [
    "round(1, -10**7)",  # 26 s: rounds to a multiple of 10**10**7, which it builds
    "(((9**99)**99)**99)**99",  # ~3e8 digits: never finished
    "((9**99)**99)**99",  # ~9e5 digits: its str() raised past the tool
    "round(1.5, 10**9)",
    "1e308 * 10",  # inf
    "(-8) ** 0.5",  # a complex number
    "9e307 + 9e307 - 9e307",
    "2**1000 * 2**1000 * 2**1000",
]


@pytest.mark.parametrize("expression", HOSTILE)
def test_calculator_refuses_what_it_cannot_bound_with_an_error(expression: str) -> None:
    started = time.perf_counter()
    answer = calculate(expression)
    assert answer.startswith("error:"), answer
    assert time.perf_counter() - started < 1


def test_calculator_keeps_the_loop_responsive_while_it_works() -> None:
    async def go() -> tuple[list[float], list[tuple[str, str, float]]]:
        (calculator,) = build_tools(["calculator"], None)
        ticks: list[float] = []

        async def tick() -> None:
            while True:
                ticks.append(time.perf_counter())
                await asyncio.sleep(0.005)

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0.02)
        answers = []
        for expression in HOSTILE:
            started = time.perf_counter()
            answer = await calculator.run(expression)
            answers.append((expression, answer, time.perf_counter() - started))
            await asyncio.sleep(0.01)
        ticker.cancel()
        return ticks, answers

    ticks, answers = asyncio.run(go())
    for expression, answer, took_s in answers:
        assert answer.startswith("error:") and took_s < 1, (expression, answer, took_s)
    assert max(b - a for a, b in itertools.pairwise(ticks)) < 0.25


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("2**1000 // 2**999", "2"),
        ("10**300 - 10**300 + 1", "1"),
        ("round(3.14159, 2)", "3.14"),
        ("round(1234, -2)", "1200"),
        ("round(2.5)", "2"),
        ("abs(-3) + sqrt(16)", "7"),
        ("1e300 * 1e8", "1e+308"),
        ("2 ** -2", "0.25"),
        ("-" * 150 + "1", "1"),
    ],
)
def test_calculator_still_answers_arithmetic_within_its_bounds(expression: str, expected: str) -> None:
    assert calculate(expression) == expected


def test_the_worst_bounded_expression_is_quick() -> None:
    # The slowest inputs under 200 characters found: big operands multiplied, divided and
    # rounded as often as fits. Each step is bounded, so together they take microseconds.
    worst = [
        "(2**1023-1)*(2**1-1)//(3**99)%(7**99)+(9**99)*(8**99)//(7**99)-round(9**99*8**99,-99)",
        "round(" * 20 + "1" + ",-99)" * 20,
        "sqrt(" * 30 + "10**300" + ")" * 30,
        "((((((((((2**10)**10)**10)**10)**10)**10)**10)**10)**10)**10)",
        "*".join(["9**99"] * 30),
    ]
    for expression in worst:
        started = time.perf_counter()
        calculate(expression[:200])
        assert time.perf_counter() - started < 0.05, expression
