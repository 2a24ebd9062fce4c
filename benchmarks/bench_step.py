"""Time one training step of plain / prune / kd / metasd at FB15k-237 sizes.

Random data (no dataset needed): N = 14,541 entities, R = 237 relations
(474 with reciprocals), ComplEx dim 64 (128 real columns), batch 1000, quiz
batch 1000, prune rate 0.9; kd and metasd with the paper's student (the teacher's weights under the mask,
mutual KD) and with the default own-weights student (one-way KD: the teacher learns from the data alone).
Every configuration gets its own model and
optimisers; rounds are interleaved (one step of each configuration per
round) so that load from other processes spreads evenly, and the median
over rounds is reported.  ``metasd every k`` is the mean time per batch over
a cycle of k batches of which one runs the meta step.

    python benchmarks/bench_step.py            # ~2-3 minutes on 2 CPU cores
    python benchmarks/bench_step.py --rounds 3 --entities 2000   # quick look
    python benchmarks/bench_step.py --structure dimension --out benchmarks/results/step_timing_dimension.json

Writes benchmarks/results/step_timing.json and prints a table with wall-clock
and process CPU time per step (CPU time is the steadier measure when other
processes share the cores; with ``--threads 1`` it is the work done).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("DGLBACKEND", "pytorch")

import torch  # noqa: E402

from common import RESULTS, machine_info, write_json  # noqa: E402
from harness import (Config, apply_overrides, build_model, configure_threads, make_masks, make_method,  # noqa: E402
                     tune_malloc)


def random_queries(n: int, num_entities: int, num_relations: int, gen: torch.Generator) -> torch.Tensor:
    """(n, 3) random reciprocal tail queries."""
    return torch.stack(
        [
            torch.randint(0, num_entities, (n,), generator=gen),
            torch.randint(0, 2 * num_relations, (n,), generator=gen),
            torch.randint(0, num_entities, (n,), generator=gen),
        ],
        dim=1,
    )


class Runner:
    """One configuration: its own model, optimisers, masks and batch stream."""

    def __init__(self, label: str, method: str, meta_every: int, args, seed: int, student: str = "paper") -> None:
        self.label, self.method, self.meta_every = label, method, meta_every
        gen = torch.Generator().manual_seed(seed)
        self.model = build_model(
            "kge", args.decoder, args.entities, args.relations, args.dim, init_scale=1e-1, generator=gen
        )
        paper = {"student": "shared", "one_way_kd": False, "kd_t2_scale": False}  # the default student: own
        cfg = apply_overrides(Config(), {
            "train": {"method": method, "batch_size": args.batch}, "prune": {"structure": args.structure},
            "metasd": {"meta_every": meta_every, "quiz_batch_size": args.quiz, **(paper if student == "paper" else {})}})
        self.steps = make_method(cfg, self.model)
        if method != "plain":
            self.steps.remask(make_masks(self.model, 0.9, "global", args.structure, args.dim), args.structure)
        self.batches = [random_queries(args.batch, args.entities, args.relations, gen) for _ in range(4)]
        self.quiz = [random_queries(args.quiz, args.entities, args.relations, gen) for _ in range(4)]
        self.i = 0
        self.times: list[float] = []
        self.cpu: list[float] = []

    def run_cycle(self) -> None:
        """meta_every steps (1 for plain/prune/kd), timed; records wall and CPU ms per step."""
        start, cpu = time.perf_counter(), time.process_time()
        for k in range(self.meta_every):
            j = self.i % 4
            self.steps.step(self.batches[j], quiz=self.quiz[j] if k == 0 else None)
            self.i += 1
        self.times.append((time.perf_counter() - start) * 1e3 / self.meta_every)
        self.cpu.append((time.process_time() - cpu) * 1e3 / self.meta_every)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entities", type=int, default=14541)
    ap.add_argument("--relations", type=int, default=237)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--decoder", default="complex")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--quiz", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    ap.add_argument("--structure", choices=("element", "dimension"), default="element",
                    help="student masks: element-wise, or whole coordinates (the student runs on the kept columns)")
    ap.add_argument("--out", default=str(RESULTS / "step_timing.json"))
    args = ap.parse_args()
    configure_threads(args.threads)
    tune_malloc()  # as a training run does

    configs = [("plain", "plain", 1), ("prune", "prune", 1), ("kd", "kd", 1),
               ("metasd every 1", "metasd", 1), ("metasd every 4", "metasd", 4),
               ("kd, own student", "kd", 1, "own"), ("metasd every 1, own student", "metasd", 1, "own")]
    runners = [Runner(*c[:3], args=args, seed=i, student=c[3] if len(c) > 3 else "paper")
               for i, c in enumerate(configs)]
    for _ in range(args.warmup):
        for r in runners:
            r.run_cycle()
    for r in runners:
        r.times.clear()
        r.cpu.clear()
    for _ in range(args.rounds):
        for r in runners:
            r.run_cycle()

    plain = statistics.median(runners[0].times)
    plain_cpu = statistics.median(runners[0].cpu)
    rows = []
    print(f"\nstep timing: N={args.entities} 2R={2 * args.relations} {args.decoder} dim {args.dim} "
          f"{args.structure} masks, "
          f"batch {args.batch} quiz {args.quiz}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} rounds")
    print(f"{'method':<30}{'wall ms':>10}{'x plain':>9}{'cpu ms':>10}{'x plain':>9}")
    for r in runners:
        med, cpu = statistics.median(r.times), statistics.median(r.cpu)
        rows.append({"method": r.label, "ms_per_step": med, "ratio_to_plain": med / plain,
                     "cpu_ms_per_step": cpu, "cpu_ratio_to_plain": cpu / plain_cpu,
                     "times_ms": r.times, "cpu_ms": r.cpu})
        print(f"{r.label:<30}{med:>10.1f}{med / plain:>9.2f}{cpu:>10.1f}{cpu / plain_cpu:>9.2f}")
    print(f"wrote {write_json(args.out, {'config': vars(args), 'machine': machine_info(), 'results': rows})}")


if __name__ == "__main__":
    main()
