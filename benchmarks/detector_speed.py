"""Time MULDE training, multiscale scoring and the mixture fit against a baseline.

Run from the repository root::

    python -m benchmarks --quick                 # tiny sizes, for a smoke check
    python -m benchmarks --out detector.json     # full run

On 2 shared AVX2 cores at a load average of about 5, --quick took 27 s and the
full run 577 s (docs/benchmarks.md).

Each operation runs in a fresh child process started from a forkserver that has
torch and mulde imported. A timing child builds every implementation of one
operation, warms each up, then times them in interleaved rounds (A, B, C, A, B,
C, ...), with one matrix-product peak sample per round, so that load from other
jobs on a shared machine hits all of them alike. Rates are medians over the
rounds. Peak memory comes from separate children that run one implementation
once, because resource.getrusage reports the maximum RSS of the whole process.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks import baseline, end_to_end
from mulde.aggregate import LevelAggregator
from mulde.detector import make_adam, score_pairs_per_pass
from mulde.network import (
    EnergyMLP,
    autocast,
    cpu_has_amx,
    dtype_name,
    resolve_device,
    resolve_precision,
)
from mulde.noise import sample_log_uniform, sigma2_weighting
from mulde.score_matching import (
    autograd_dsm_loss_backward,
    dsm_loss,
    first_layer_all_levels,
    multiscale_energies,
    select_backward,
)


@dataclass(frozen=True)
class BenchConfig:
    """One network and data size to time.

    ``score_rows`` rows are scored at ``n_levels`` levels per timed call;
    ``rounds`` is the number of timed calls of each implementation.
    """

    n_features: int
    hidden_sizes: tuple[int, ...]
    batch_size: int
    score_rows: int
    rounds: int
    n_levels: int = 16
    beta: float = 0.1


# "reference": the configuration of the public reference MULDE code (2-D
# features, two hidden layers of 4096, batch 2048). "ped2": a default for UCSD
# Ped2 object features.
# NOTE: the Ped2 sizes (1,300-d features, hidden (1024, 1024), batch 1024) are
# provisional until the feature pipeline fixes them.
CONFIGS = {
    "reference": BenchConfig(2, (4096, 4096), 2048, score_rows=256, rounds=5),
    "ped2": BenchConfig(1300, (1024, 1024), 1024, score_rows=1024, rounds=5),
}
QUICK_CONFIGS = {
    "reference-quick": BenchConfig(2, (256, 256), 256, score_rows=256, rounds=3),
    "ped2-quick": BenchConfig(260, (128, 128), 256, score_rows=256, rounds=3),
}

# Throughputs of the public reference MULDE code at the "reference"
# configuration as reported for another machine (a CPU with AMX, 320 GFLOP/s
# float32 and 2,100 GFLOP/s bfloat16 peak); they were not measured here.
REFERENCE_CODE = {
    "train_samples_per_s": 840.0,
    "score_norms_sample_levels_per_s": 4300.0,
    "fp32_peak_gflops": 320.0,
    "bf16_peak_gflops": 2100.0,
}
# Targets at the "reference" configuration, in the units of each operation.
TARGETS = {
    "train": 4 * REFERENCE_CODE["train_samples_per_s"],
    "energies": 8 * REFERENCE_CODE["score_norms_sample_levels_per_s"],
    "norms": 3 * REFERENCE_CODE["score_norms_sample_levels_per_s"],
}

# Matrix product timed for the peak, (m, k) @ (k, n).
PEAK_SHAPE = (2048, 4096, 4096)
QUICK_PEAK_SHAPE = (1024, 2048, 2048)
# bfloat16 probe on CPUs without AMX, where the full product would take minutes.
BF16_PROBE_SHAPE = (512, 512, 512)
MIXTURE_ROWS = 20_000
SCORE_BATCH_SIZE = 16_384  # MULDE's default sample-level pairs per forward pass
LEVELS_LOW, LEVELS_HIGH = 1e-3, 1.0


# ------------------------------------------------------------------ FLOP model
#
# Only the dense matrix products are counted, at 2 FLOPs per multiply-add;
# activations, sums and the optimiser are left out. The layers of f are
# (d + 1) -> h1 -> ... -> hK -> 1, and a product through a layer of in x out
# weights costs 2 * in * out FLOPs per row.
#
# Scoring energies: one forward pass per (sample, level), counted for the plain
# algorithm even where the shared first layer does less work, so a rate above the
# FLOP limit shows an algorithmic saving.
# Scoring with score norms: a forward pass and a backward pass to the input,
# without weight gradients: 2 products per layer.
# Training step, per sample: the noisy forward (1 product per layer), the
# backward to the input (1), the backward of the loss through those input-gradient
# products (2: with respect to the incoming gradient and to the weight), through
# the noisy forward (2: input and weight), the clean forward of the regulariser
# (1) and its backward (2): 9 per layer. The first layer skips the two products
# with respect to the network's input, so it counts 7. Where the 4096 x 4096 layer
# dominates, a step costs about 9 forward passes.


def layer_shapes(config: BenchConfig) -> list[tuple[int, int]]:
    widths = [config.n_features + 1, *config.hidden_sizes, 1]
    return list(zip(widths[:-1], widths[1:], strict=True))


def forward_flops(config: BenchConfig) -> float:
    """FLOPs of one forward pass of f for one (sample, level) pair."""
    return 2.0 * sum(fan_in * fan_out for fan_in, fan_out in layer_shapes(config))


def train_flops(config: BenchConfig) -> float:
    """FLOPs of one training step per sample; see the FLOP model above."""
    shapes = layer_shapes(config)
    first = 7 * shapes[0][0] * shapes[0][1]
    rest = 9 * sum(fan_in * fan_out for fan_in, fan_out in shapes[1:])
    return 2.0 * (first + rest)


def flops_per_unit(config: BenchConfig, operation: str) -> float:
    """FLOPs per sample (training) or per sample-level pair (scoring)."""
    if operation.startswith("train"):
        return train_flops(config)
    if operation.startswith("norms"):
        return 2 * forward_flops(config)
    return forward_flops(config)


# ---------------------------------------------------------------- machine info


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: torch.device) -> dict:
    info = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "amx_bf16": cpu_has_amx(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "cuda_device": None,
    }
    if device.type == "cuda":
        info["cuda_device"] = torch.cuda.get_device_name(device)
        info["cuda_fp32_matmul_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return info


def bf16_is_fast(device: torch.device) -> bool:
    """True where bfloat16 products run in hardware: CUDA with bf16, AMX CPUs."""
    return resolve_precision("auto", device) == torch.bfloat16


# --------------------------------------------------------------------- helpers


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(function: Callable[[], object], device: torch.device) -> float:
    """Wall-clock seconds of one call."""
    return cpu_and_wall_seconds(function, device)[1]


def cpu_and_wall_seconds(
    function: Callable[[], object], device: torch.device
) -> tuple[float, float]:
    """CPU seconds of this process (all threads) and wall-clock seconds of a call."""
    synchronize(device)
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    function()
    synchronize(device)
    return time.process_time() - cpu_start, time.perf_counter() - wall_start


def matmul_seconds(
    shape: tuple[int, int, int], dtype: torch.dtype, device: torch.device
) -> tuple[Callable[[], object], float]:
    """A product of the given shape and dtype as a callable, and its FLOPs."""
    m, k, n = shape
    generator = torch.Generator(device=device).manual_seed(0)
    left = torch.randn(m, k, generator=generator, device=device).to(dtype)
    right = torch.randn(k, n, generator=generator, device=device).to(dtype)
    return (lambda: torch.mm(left, right)), 2.0 * m * k * n


def rss_mib() -> float:
    """Current resident set size of this process in MiB (Linux), else NaN."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def max_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


class AutogradOnlyMLP(EnergyMLP):
    """EnergyMLP whose training loss takes the autograd double backward."""

    supports_explicit_gradient = False


def explicit_backward_norms(
    net: EnergyMLP, x: torch.Tensor, levels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score norms with the hand-written backward pass in inference mode.

    The variant of multiscale_energies that was tried and dropped: it ran no
    faster than autograd on the shared first layer.
    """
    n, n_levels = x.shape[0], levels.shape[0]
    with torch.inference_mode():
        pre_activation = first_layer_all_levels(net, x, levels)
        energies, delta = net.energy_and_gradient_from_first_layer(pre_activation)
        grad = net.project_input_gradient(delta)
        squared = grad.float().square().sum(dim=1).reshape(n, n_levels)
    return energies.float().reshape(n, n_levels), squared * levels.square()


def no_grad_energies(
    net: EnergyMLP, x: torch.Tensor, levels: torch.Tensor
) -> torch.Tensor:
    """Energies of multiscale_energies without its inference_mode block.

    Inductor rejects inference tensors (torch 2.13), so the compiled variant runs
    this under torch.no_grad.
    """
    pre_activation = first_layer_all_levels(net, x, levels)
    return net.energy_from_first_layer(pre_activation).float()


def use_fresh_compile_cache() -> None:
    """Point inductor at an empty cache so that compile times are cold ones."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")


def build_net(
    config: BenchConfig, device: torch.device, cls: type[EnergyMLP] = EnergyMLP
) -> EnergyMLP:
    net = cls(config.n_features, config.hidden_sizes)
    net.reset_parameters(torch.Generator().manual_seed(0))
    return net.to(device)


def replicated_energies(
    net: EnergyMLP, x: torch.Tensor, levels: torch.Tensor, score_norms: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """multiscale_energies before the speed-ups: x repeated per level, full passes."""
    n, d = x.shape
    n_levels = levels.shape[0]
    x_rep = x.unsqueeze(1).expand(n, n_levels, d).reshape(n * n_levels, d)
    sigma_rep = levels.unsqueeze(0).expand(n, n_levels).reshape(n * n_levels)
    if not score_norms:
        with torch.inference_mode():
            energies = net(x_rep, sigma_rep).float()
        return energies.reshape(n, n_levels), None
    with torch.enable_grad():
        x_rep = x_rep.detach().requires_grad_(True)
        energies = net(x_rep, sigma_rep)
        (grad,) = torch.autograd.grad(energies.sum(), x_rep)
    norms = (sigma_rep.unsqueeze(1) * grad.float()).square().sum(dim=1)
    return energies.detach().float().reshape(n, n_levels), norms.reshape(n, n_levels)


def chunked(
    score: Callable, x: torch.Tensor, levels: torch.Tensor, config: BenchConfig
) -> None:
    """Score x in the chunks MULDE.multiscale_scores uses."""
    pairs = score_pairs_per_pass(SCORE_BATCH_SIZE, config.hidden_sizes, x.device)
    rows = max(1, pairs // levels.shape[0])
    for start in range(0, x.shape[0], rows):
        score(x[start : start + rows], levels)


# --------------------------------------------------------- implementations
#
# Each builder returns (callable for one timed call, units of work per call).


def build_train(config, implementation, device, dtype):
    data = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(config.batch_size, config.n_features, generator=data, device=device)
    if implementation == "baseline":
        net = baseline.from_energy_mlp(build_net(config, device), config.n_features)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-4, betas=(0.5, 0.9))

        def step():
            baseline.train_step(net, optimizer, x, LEVELS_LOW, LEVELS_HIGH, config.beta)

        return step, config.batch_size

    cls = AutogradOnlyMLP if implementation == "mulde_autograd" else EnergyMLP
    net = build_net(config, device, cls).train()
    optimizer = make_adam(net.parameters(), 1e-4)
    cpu_gen = torch.Generator().manual_seed(2)
    noise_gen = torch.Generator(device=device).manual_seed(3)
    # "mulde" and "mulde_autograd" run MULDE._train's step. The others run
    # autograd's backward over dsm_loss, whose input gradient is written out
    # ("input_gradient_only", which MULDE uses below WRITTEN_OUT_MIN_WIDTH) or
    # compiled.
    step_loss = select_backward(net)
    if implementation == "input_gradient_only":
        step_loss = autograd_dsm_loss_backward
    elif implementation == "mulde_compiled":
        use_fresh_compile_cache()
        compiled = torch.compile(dsm_loss)

        def step_loss(*args):
            compiled(*args).total.backward()

    def step():
        sigma = sample_log_uniform(config.batch_size, LEVELS_LOW, LEVELS_HIGH, cpu_gen)
        weight = sigma2_weighting(sigma)
        sigma, weight = sigma.to(device), weight.to(device)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            step_loss(net, x, sigma, weight, config.beta, noise_gen)
        optimizer.step()

    return step, config.batch_size


def build_scoring(config, implementation, device, dtype, score_norms):
    data = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(config.score_rows, config.n_features, generator=data, device=device)
    levels_np = np.linspace(LEVELS_LOW, LEVELS_HIGH, config.n_levels)
    levels = torch.as_tensor(levels_np, dtype=torch.float32, device=device)
    work = config.score_rows * config.n_levels

    if implementation == "baseline":
        net = baseline.from_energy_mlp(build_net(config, device), config.n_features)
        return (lambda: baseline.score(net, x, levels_np.tolist())), work

    net = build_net(config, device).eval()
    if implementation == "replicated":

        def score(chunk, levels):
            return replicated_energies(net, chunk, levels, score_norms)

    elif implementation == "explicit_backward":

        def score(chunk, levels):
            return explicit_backward_norms(net, chunk, levels)

    elif implementation == "mulde_compiled":
        use_fresh_compile_cache()
        compiled = torch.compile(no_grad_energies)

        def score(chunk, levels):
            with torch.no_grad():
                return compiled(net, chunk, levels)

    else:

        def score(chunk, levels):
            return multiscale_energies(net, chunk, levels, score_norms=score_norms)

    def call():
        with autocast(device, dtype):
            chunked(score, x, levels, config)

    return call, work


def build(config, operation, implementation, device):
    # The baseline is float32 only, as research code usually is.
    dtype = resolve_precision("auto", device)
    if implementation == "baseline":
        dtype = torch.float32
    if operation.startswith("train"):
        return (*build_train(config, implementation, device, dtype), dtype)
    score_norms = operation.startswith("norms")
    call, work = build_scoring(config, implementation, device, dtype, score_norms)
    return call, work, dtype


# ----------------------------------------------------------------- child jobs


def timing_job(job: dict) -> dict:
    """Time every implementation of one operation in interleaved rounds."""
    torch.manual_seed(0)
    device = torch.device(job["device"])
    config = BenchConfig(**job["config"])
    peak_call, peak_flops = matmul_seconds(
        tuple(job["peak_shape"]), torch.float32, device
    )
    peak_call()
    calls, first_call_s = {}, {}
    for implementation in job["implementations"]:
        call, work, dtype = build(config, job["operation"], implementation, device)
        # The first call includes one-off costs: allocation, torch.compile.
        first_call_s[implementation] = timed_call(call, device)
        calls[implementation] = (call, work, dtype)

    seconds = {implementation: [] for implementation in calls}
    cpu_seconds = {implementation: [] for implementation in calls}
    peak_gflops, load_rounds = [], [os.getloadavg()]
    for _ in range(config.rounds):
        peak_gflops.append(peak_flops / timed_call(peak_call, device) / 1e9)
        for implementation, (call, _, _) in calls.items():
            cpu, wall = cpu_and_wall_seconds(call, device)
            seconds[implementation].append(wall)
            cpu_seconds[implementation].append(cpu)
        load_rounds.append(os.getloadavg())

    results = []
    for implementation, (_, work, dtype) in calls.items():
        median = statistics.median(seconds[implementation])
        results.append(
            {
                "config": job["config_name"],
                "operation": job["operation"],
                "implementation": implementation,
                "dtype": dtype_name(dtype),
                "work_per_call": work,
                "seconds": seconds[implementation],
                "cpu_seconds": cpu_seconds[implementation],
                "median_s": median,
                "rate": work / median,
                "best_rate": work / min(seconds[implementation]),
                "first_call_s": first_call_s[implementation],
            }
        )
    return {
        "results": results,
        "peak_fp32_gflops": peak_gflops,
        "load_rounds": load_rounds,
        "torch_threads": torch.get_num_threads(),
    }


def memory_job(job: dict) -> dict:
    """Run one implementation once and report the peak memory of this process."""
    device = torch.device(job["device"])
    config = BenchConfig(**job["config"])
    call, _, _ = build(config, job["operation"], job["implementation"], device)
    rss_before = rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    call()
    record = {
        "config": job["config_name"],
        "operation": job["operation"],
        "implementation": job["implementation"],
        "rss_after_setup_mib": rss_before,
        "max_rss_mib": max_rss_mib(),
    }
    if device.type == "cuda":
        record["cuda_max_allocated_mib"] = (
            torch.cuda.max_memory_allocated(device) / 2**20
        )
    return record


def peak_job(job: dict) -> dict:
    """Matrix-product peak in float32, and in bfloat16 where the hardware has it."""
    device = torch.device(job["device"])
    results = {"load_before": os.getloadavg()}
    cases = [("fp32", torch.float32, tuple(job["peak_shape"]))]
    if bf16_is_fast(device):
        cases.append(("bf16", torch.bfloat16, tuple(job["peak_shape"])))
    else:
        cases.append(("bf16_probe", torch.bfloat16, BF16_PROBE_SHAPE))
    for name, dtype, shape in cases:
        call, flops = matmul_seconds(shape, dtype, device)
        call()
        rates = [flops / timed_call(call, device) / 1e9 for _ in range(job["repeats"])]
        results[name] = {
            "shape": list(shape),
            "gflops": rates,
            "median_gflops": statistics.median(rates),
        }
    results["load_after"] = os.getloadavg()
    return results


def mixture_job(job: dict) -> dict:
    """Fit time of the level mixture on nearly collinear synthetic L-vectors."""
    rng = np.random.default_rng(0)
    n_levels = job["n_levels"]
    # Energies at neighbouring levels are nearly collinear: a few latent factors
    # plus a little noise.
    factors = rng.standard_normal((MIXTURE_ROWS, 3))
    levels = factors @ rng.standard_normal((3, n_levels))
    levels += 0.01 * rng.standard_normal(levels.shape)
    results = {"load_before": os.getloadavg(), "rows": MIXTURE_ROWS}
    for n_components in job["n_components"]:

        def fit(n_components=n_components):
            LevelAggregator("gmm", n_components, 1e-3, random_state=0).fit(levels)

        fit()
        seconds = [timed_call(fit, torch.device("cpu")) for _ in range(job["repeats"])]
        results[f"n_components_{n_components}"] = {
            "seconds": seconds,
            "median_s": statistics.median(seconds),
        }
    results["load_after"] = os.getloadavg()
    return results


JOBS = {
    "timing": timing_job,
    "memory": memory_job,
    "peak": peak_job,
    "mixture": mixture_job,
}


def run_job(job: dict) -> dict:
    if job["threads"] is not None:
        torch.set_num_threads(job["threads"])
    return JOBS[job["kind"]](job)


# ---------------------------------------------------------------------- plan

OPERATIONS = {
    "train": ["mulde", "input_gradient_only", "mulde_autograd", "baseline"],
    "energies": ["mulde", "replicated", "baseline"],
    "norms": ["mulde", "explicit_backward", "replicated", "baseline"],
}
# torch.compile experiments, full runs only: (operation, configs).
# The reference configuration is left out: its products run near the peak, so
# fusing the elementwise work has little to gain there.
COMPILE_EXPERIMENTS = [
    ("energies_compiled", ("ped2",)),
    ("train_compiled", ("ped2",)),
]


def plan_jobs(args, configs: dict[str, BenchConfig]) -> list[dict]:
    peak_shape = list(QUICK_PEAK_SHAPE if args.quick else PEAK_SHAPE)
    common = {"device": args.device, "peak_shape": peak_shape, "threads": args.threads}
    repeats = 3 if args.quick else 5
    jobs = [{"kind": "peak", "stage": "start", "repeats": repeats} | common]
    for name, config in configs.items():
        base = common | {"config_name": name, "config": asdict(config)}
        for operation, implementations in OPERATIONS.items():
            jobs.append(
                base
                | {
                    "kind": "timing",
                    "operation": operation,
                    "implementations": implementations,
                }
            )
            for implementation in implementations:
                jobs.append(
                    base
                    | {
                        "kind": "memory",
                        "operation": operation,
                        "implementation": implementation,
                    }
                )
    if not args.quick and not args.no_compile:
        for operation, names in COMPILE_EXPERIMENTS:
            for name in names:
                jobs.append(
                    common
                    | {
                        "kind": "timing",
                        "config_name": name,
                        "config": asdict(configs[name]),
                        "operation": operation,
                        "implementations": ["mulde", "mulde_compiled"],
                    }
                )
    jobs.append(
        {
            "kind": "mixture",
            "n_levels": 16,
            "n_components": [1] if args.quick else [1, 4],
            "repeats": 2 if args.quick else 3,
        }
        | common
    )
    jobs.append({"kind": "peak", "stage": "end", "repeats": repeats} | common)
    return jobs


# ------------------------------------------------------------------- summary


def summarise(report: dict, configs: dict[str, BenchConfig]) -> dict:
    """Add FLOP rates, fractions of peak, ratios and the targets."""
    start, end = report["peak"]["start"], report["peak"]["end"]
    fp32_samples = start["fp32"]["gflops"] + end["fp32"]["gflops"]
    bf16_key = "bf16" if "bf16" in start else None
    for block in report["timings"]:
        fp32_samples = fp32_samples + block["peak_fp32_gflops"]
    peaks = {
        "float32": statistics.median(fp32_samples),
        # The fastest sample is the best estimate of the unloaded machine.
        "float32_best": max(fp32_samples),
    }
    if bf16_key:
        peaks["bfloat16"] = statistics.median(
            start["bf16"]["gflops"] + end["bf16"]["gflops"]
        )
    else:
        # Emulated bfloat16, timed on a small product only.
        peaks["bfloat16_probe"] = statistics.median(
            start["bf16_probe"]["gflops"] + end["bf16_probe"]["gflops"]
        )

    summary = {"peak_gflops": peaks, "configs": {}}
    for block in report["timings"]:
        window_peak = statistics.median(block["peak_fp32_gflops"])
        for result in block["results"]:
            config = configs[result["config"]]
            flops = flops_per_unit(config, result["operation"])
            achieved = result["rate"] * flops / 1e9
            # The window's own fp32 samples track the load during these rounds;
            # bfloat16 is compared with the run's bfloat16 peak.
            peak = window_peak if result["dtype"] == "float32" else peaks["bfloat16"]
            result["flops_per_unit"] = flops
            result["achieved_gflops"] = achieved
            result["peak_gflops_used"] = peak
            result["fraction_of_peak"] = achieved / peak
            result["limit_rate_at_peak"] = peak * 1e9 / flops

    for name in configs:
        entries = {}
        for block in report["timings"]:
            for result in block["results"]:
                if result["config"] == name:
                    key = (result["operation"], result["implementation"])
                    entries[key] = result
        lines = {}
        for operation in OPERATIONS:
            ours = entries.get((operation, "mulde"))
            if ours is None:
                continue
            line = {"rate": ours["rate"], "fraction_of_peak": ours["fraction_of_peak"]}
            for other in OPERATIONS[operation][1:]:
                line[f"speedup_vs_{other}"] = (
                    ours["rate"] / entries[(operation, other)]["rate"]
                )
            lines[operation] = line
        for operation in ("energies_compiled", "train_compiled"):
            eager = entries.get((operation, "mulde"))
            compiled = entries.get((operation, "mulde_compiled"))
            if eager and compiled:
                lines[operation] = {
                    "speedup_compiled_vs_eager": compiled["rate"] / eager["rate"],
                    "compile_first_call_s": compiled["first_call_s"],
                    "eager_first_call_s": eager["first_call_s"],
                    "eager_call_s": eager["median_s"],
                    "compiled_call_s": compiled["median_s"],
                }
        if name == "reference":
            lines["targets"] = target_status(entries, configs[name], peaks)
        summary["configs"][name] = lines
    return summary


def target_status(entries: dict, config: BenchConfig, peaks: dict) -> dict:
    targets = {}
    for operation, target in TARGETS.items():
        ours = entries.get((operation, "mulde"))
        if ours is None:
            continue
        flops = flops_per_unit(config, operation)
        best_peak = peaks["bfloat16" if ours["dtype"] == "bfloat16" else "float32_best"]
        best_limit = best_peak * 1e9 / flops
        targets[operation] = {
            "target": target,
            "measured": ours["rate"],
            "met": ours["rate"] >= target,
            "limit_here_at_window_peak": ours["limit_rate_at_peak"],
            "limit_here_at_best_peak": best_limit,
            "reachable_here": best_limit >= target,
            "target_fraction_of_reference_machine_bf16_limit": (
                target * flops / (REFERENCE_CODE["bf16_peak_gflops"] * 1e9)
            ),
            "measured_fraction_of_peak_here": ours["fraction_of_peak"],
        }
    return targets


def print_summary(report: dict) -> None:
    summary = report["summary"]
    peaks = ", ".join(f"{k} {v:.1f}" for k, v in summary["peak_gflops"].items())
    print(f"matrix-product peak (GFLOP/s): {peaks}")
    header = (
        f"{'config':<16}{'operation':<18}{'implementation':<16}"
        f"{'rate':>11}{'GFLOP/s':>9}{'of peak':>9}{'max RSS MiB':>13}"
    )
    print(header)
    memory = {
        (m["config"], m["operation"], m["implementation"]): m["max_rss_mib"]
        for m in report["memory"]
    }
    for block in report["timings"]:
        for result in block["results"]:
            key = (result["config"], result["operation"], result["implementation"])
            rss = memory.get(key)
            print(
                f"{result['config']:<16}{result['operation']:<18}"
                f"{result['implementation']:<16}{result['rate']:>11.1f}"
                f"{result['achieved_gflops']:>9.1f}"
                f"{result['fraction_of_peak']:>9.1%}"
                f"{'' if rss is None else f'{rss:.0f}':>13}"
            )
    mixture = report["mixture"]
    for key, value in mixture.items():
        if key.startswith("n_components_"):
            print(
                f"mixture fit, {mixture['rows']} rows x 16 levels, "
                f"{key.removeprefix('n_components_')} component(s): "
                f"{value['median_s']:.3f} s"
            )
    for name, lines in summary["configs"].items():
        for operation, line in lines.items():
            print(f"{name} {operation}: {json.dumps(line, default=float)}")


# ---------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Time MULDE training and scoring against the baseline.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes for a smoke check (< 1 min)"
    )
    parser.add_argument("--out", help="write the full report to this JSON file")
    parser.add_argument(
        "--device", default="auto", help="'auto', 'cpu' or 'cuda[:N]' (default: auto)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads in each child (default: torch's choice; 1 "
        "with --quick, where the tiny operations lose more to OpenMP "
        "synchronisation on a loaded machine than they gain from threads)",
    )
    parser.add_argument(
        "--no-compile",
        action="store_true",
        help="skip the torch.compile experiments of the full run",
    )
    parser.add_argument(
        "--ped2",
        metavar="ROOT",
        help="also time the main job on the UCSD Ped2 copy at ROOT, stage by "
        "stage, and the latency of scoring one new frame (benchmarks/end_to_end.py)",
    )
    parser.add_argument(
        "--ped2-clips",
        type=int,
        metavar="N",
        help="with --ped2: only the first N training and test clips (default: all)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.ped2_clips is not None and args.ped2_clips < 1:
        raise SystemExit(f"--ped2-clips={args.ped2_clips} must be at least 1")
    if args.ped2 and not Path(args.ped2).is_dir():
        raise SystemExit(f"--ped2 {args.ped2}: no such folder")
    device = resolve_device(args.device)
    args.device = str(device)
    if args.quick and args.threads is None:
        args.threads = 1
    configs = QUICK_CONFIGS if args.quick else CONFIGS
    started = time.time()
    report = {
        "command": " ".join(["python -m benchmarks", *(argv or sys.argv[1:])]),
        "quick": args.quick,
        "threads_per_child": args.threads,
        "started_unix": started,
        "machine": machine_info(device),
        "configs": {name: asdict(config) for name, config in configs.items()},
        "reference_code": REFERENCE_CODE,
        "targets": TARGETS,
        "peak": {},
        "timings": [],
        "memory": [],
        "compile_errors": [],
    }
    # A forkserver child starts in well under a second once torch is imported,
    # and it never inherits thread pools that the parent has started.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "mulde.score_matching", "benchmarks"])
    jobs = plan_jobs(args, configs)
    for index, job in enumerate(jobs, 1):
        label = " ".join(
            str(job[key])
            for key in ("kind", "config_name", "operation", "implementation", "stage")
            if key in job
        )
        print(f"[{index}/{len(jobs)}] {label}", flush=True)
        with context.Pool(1) as pool:
            try:
                result = pool.apply(run_job, (job,))
            except Exception as error:
                # torch.compile needs a working C++ toolchain on the CPU and may
                # fail there; the other measurements stand without it.
                if "compiled" not in job.get("operation", ""):
                    raise
                print(f"  failed: {type(error).__name__}: {error}", flush=True)
                report["compile_errors"].append({"job": job, "error": repr(error)})
                continue
        if job["kind"] == "peak":
            report["peak"][job["stage"]] = result
        elif job["kind"] == "timing":
            report["timings"].append(result)
        elif job["kind"] == "memory":
            report["memory"].append(result)
        else:
            report["mixture"] = result
    if args.ped2:
        print("end to end on UCSD Ped2", flush=True)
        # In a child of its own, so that its peak memory is the main job's.
        with context.Pool(1) as pool:
            report["end_to_end"] = pool.apply(
                end_to_end.measure, (Path(args.ped2), args.ped2_clips)
            )
    report["duration_s"] = time.time() - started
    report["summary"] = summarise(report, configs)
    print_summary(report)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1)
        print(f"report written to {args.out}")
    return 0
