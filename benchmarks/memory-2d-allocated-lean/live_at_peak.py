"""The tensors live at the exact peak of one training step (2D, 256² × 12 coils, 5 layers × CHANNELS), grouped
by the molrecon frames and the op that allocated them.

    OMP_NUM_THREADS=1 python benchmarks/memory-2d-allocated-lean/live_at_peak.py mol-sn 64
    OMP_NUM_THREADS=1 python benchmarks/memory-2d-allocated-lean/live_at_peak.py mol-sn 64 --set architecture=sll
    OMP_NUM_THREADS=1 python benchmarks/memory-2d-allocated-lean/live_at_peak.py mol-lr 64 --after-data
"""

from __future__ import annotations

import argparse
import collections

import torch
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from molrecon.bench.memory import _resolve, step_problem


def _label(stack: list[str]) -> str:
    frames = [s.split("molrecon/")[-1] for s in stack if "molrecon" in s]
    ops = [s for s in stack if s.startswith("op:")]
    return " < ".join(frames[-3:][::-1]) + " | " + (ops[-1] if ops else "")


def _allocations(prof) -> list[tuple[int, int, int, list[str]]]:
    """``(time, address, bytes, frames)`` of every allocation (bytes > 0) and free (bytes < 0), in time order."""
    out: list[tuple[int, int, int, list[str]]] = []
    todo = [(e, []) for e in prof.profiler.kineto_results.experimental_event_tree()]
    while todo:
        event, stack = todo.pop()
        if event.tag == _EventType.Allocation:
            out.append((event.start_time_ns, event.extra_fields.ptr, event.extra_fields.alloc_size, stack))
        if event.tag == _EventType.PyCall:
            stack = [*stack, event.name]
        elif event.tag == _EventType.TorchOp:
            stack = [*stack, "op:" + event.name]
        todo.extend((child, stack) for child in event.children)
    return sorted(out, key=lambda a: a[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("method")
    p.add_argument("channels", type=int)
    p.add_argument("--after-data", action="store_true", help="the penalty's backward after the data loss's")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a model setting (str)")
    a = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    spec = {"method": a.method, "max_iter": 5, "dims": "2d", "channels": a.channels, "layers": 5,
            "model_kwargs": dict(kv.split("=", 1) for kv in a.set)}
    physics, target, y = step_problem((256, 256), 12, "2d")
    model, forward = _resolve(a.method)(spec)
    model.train()
    opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=1e-4)
    extra = getattr(model, "extra_loss", None)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, with_stack=True) as prof:
        x = forward(y, physics)
        loss = (x.abs() - target.abs()).pow(2).mean()
        if callable(extra) and not a.after_data:
            loss = loss + extra(x, target)[0]
        opt.zero_grad()
        loss.backward()
        if callable(extra) and a.after_data:
            extra(x.detach(), target)[0].backward()
        opt.step()
    live: dict[int, tuple[int, list[str]]] = {}
    now = peak = 0
    at_peak: dict[int, tuple[int, list[str]]] = {}
    for _, ptr, size, stack in _allocations(prof):
        if size > 0:
            live[ptr] = (size, stack)
            now += size
        else:
            now -= live.pop(ptr, (-size, None))[0]
        if now > peak:
            peak, at_peak = now, dict(live)
    print(f"{a.method}, {a.channels} channels: peak {peak / 2**20:.1f} MiB")
    groups: collections.Counter = collections.Counter()
    for size, stack in at_peak.values():
        groups[_label(stack)] += size
    for where, size in groups.most_common(25):
        print(f"{size / 2**20:8.2f}  {where}")


if __name__ == "__main__":
    main()
