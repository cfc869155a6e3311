"""How long `import agentshards` and a resumed run take, each beside a baseline from the same run.

- import: `python -c "import agentshards"` vs `python -c "pass"` (median of N fresh interpreters);
- resume: `run_agent` on an open run whose N chat calls are all recorded (replay + finish, 0 requests),
  vs the same agent run fresh against the fake LLM server with zero delay.

    python scripts/bench_resume.py [--repeat 7] [--calls 10 100]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contextlib

import agentshards

import _bench_agents


def _resume_ms(calls: int, repeat: int, config: agentshards.RunConfig, llm: agentshards.FakeLLMServer,
               work: Path) -> tuple[float, float]:
    fresh, resumed = [], []
    template = work / f"template-{calls}"
    _bench_agents.INTERRUPT_AT_END = True
    with contextlib.suppress(KeyboardInterrupt):
        agentshards.run_agent(_bench_agents.chat_agent, agent_id="bench", data_dir=template, config=config, n=calls)
    _bench_agents.INTERRUPT_AT_END = False
    for r in range(repeat):
        start = time.perf_counter()
        agentshards.run_agent(_bench_agents.chat_agent, agent_id="bench", data_dir=work / f"fresh-{calls}-{r}",
                              config=config, n=calls)
        fresh.append((time.perf_counter() - start) * 1000)
        target = work / f"resume-{calls}-{r}"
        shutil.copytree(template, target)
        before = llm.request_count
        start = time.perf_counter()
        agentshards.run_agent(_bench_agents.chat_agent, agent_id="bench", data_dir=target, config=config, n=calls)
        resumed.append((time.perf_counter() - start) * 1000)
        assert llm.request_count == before, "a resumed run made a request"
    return statistics.median(fresh), statistics.median(resumed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--calls", type=int, nargs="+", default=[10, 100])
    args = parser.parse_args()
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"SQLite {agentshards._core.sqlite.sqlite_version()}")
    base = _bench_agents.interpreter_ms("pass", args.repeat)
    imp = _bench_agents.interpreter_ms("import agentshards", args.repeat)
    print(f"{'measure':<44} {'baseline ms':>12} {'agentshards ms':>15} {'ratio':>7}")
    print(f"{'python -c pass vs import agentshards':<44} {base:>12.1f} {imp:>15.1f} {imp / base:>7.2f}")
    print(f"{'  (import cost alone)':<44} {'':>12} {imp - base:>15.1f}")
    with agentshards.FakeLLMServer() as llm, tempfile.TemporaryDirectory() as tmp:
        config = agentshards.RunConfig(llm=agentshards.LLMConfig(api_key="k", base_url=llm.base_url))
        agentshards.run_agent(_bench_agents.chat_agent, agent_id="warm", data_dir=Path(tmp) / "warm",
                              config=config, n=1)
        for calls in args.calls:
            fresh, resumed = _resume_ms(calls, args.repeat, config, llm, Path(tmp))
            label = f"fresh run vs resume, {calls} recorded chat calls"
            print(f"{label:<44} {fresh:>12.1f} {resumed:>15.1f} {resumed / fresh:>7.2f}")


if __name__ == "__main__":
    main()
