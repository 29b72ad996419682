"""The comparison benchmark: a teacher, its student without KD and with every method, over seeds
(the paper's Table 3, its ablations and the λ sweep), on the synthetic world.

A plan (YAML, :class:`BenchmarkPlan`) names (teacher, student) preset pairs, the methods, variants
(a method with overrides of its own: ablations and sweeps), the seeds (and rows with seeds of their own),
and ``--set``-style overrides shared by every run. :func:`run_benchmark` runs everything in turn in this
process: each teacher once (``<teachers_dir>/<preset>/``), then per seed the student rows run at it
(``<out>/<pair>/<row>/seed<k>/``). A run
whose folder already holds it finished is reused, an interrupted one resumes. Every final checkpoint
(``last.pt``; ``best.pt`` would be chosen on the very frames we report) is evaluated on the same
validation frames, its MACs counted on the first of them and its CPU latency timed; the training cost
per frame comes from the run's ``log.jsonl``. The results land in ``results.json`` (every number of
every seed), ``results.md`` (one table per pair and, over several seeds, each row's per-seed gain over
the student without KD trained from the same seed) and ``results.png``.
"""

from rdd3d.benchmark.plan import BenchmarkPlan, PairPlan, VariantPlan, load_plan, plan_runs
from rdd3d.benchmark.report import PairedGain, RowSummary, paired_gains, summarise, write_reports
from rdd3d.benchmark.results import BenchmarkResults, RunResult
from rdd3d.benchmark.runner import run_benchmark

__all__ = ["BenchmarkPlan", "BenchmarkResults", "PairPlan", "PairedGain", "RowSummary", "RunResult", "VariantPlan",
           "load_plan", "paired_gains", "plan_runs", "run_benchmark", "summarise", "write_reports"]
