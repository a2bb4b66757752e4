"""Data-parallel training with torch.distributed: DistributedDataParallel over 2 gloo processes
on CPU gives, step after step, the parameters one process gets training on the full batch — for
every registered gradient rule (a rule is covered the moment it registers), for a neural ODE and
for a neural SDE trained through Wong–Zakai, each process drawing its own Karhunen–Loève paths
from a generator seeded by its rank.

Why this needs a test: the adjoint rules compute parameter gradients inside custom autograd
Functions (the backward kit's shell), ACA hands running sums to autograd and the quadrature rules
add contributions interval by interval — the places where DDP's gradient hooks and buckets could
see a gradient twice, or never (a parameter hidden from the graph DDP walks for unused-parameter
detection). So both DDP modes run: the default, and ``find_unused_parameters=True``; and FSDP,
both APIs (``fully_shard``, and ``FullyShardedDataParallel(use_orig_params=True)``), with the
module that calls ``solve`` as the one unit — while a vector field that is an FSDP unit of its
own is refused with an error that says how to wrap instead.

Exact by construction. Rows of the batch never interact: DDP averages each process's gradient
of its half-batch mean, which is the gradient of the full-batch mean; the optimiser is plain SGD
(Adam would hide a gradient counted twice); the solves are float64 at rtol = atol = 1e-9, so that
the steps an adaptive solver takes on half a batch or on all of it give the same numbers to
~1e-8, whichever rule (and whichever rule ``Auto`` picks for either batch size). For the SDE the
single-process reference drives row block r with the Karhunen–Loève coefficients process r drew:
it draws them from the same per-rank generators, in the same order, and stacks them along the
batch (``KarhunenLoevePath`` of the concatenated ξ), so it solves the very same ODE.

The processes are this file run as a script with the environment torchrun sets (RANK,
WORLD_SIZE, MASTER_ADDR, MASTER_PORT): one launch of 2 processes trains every rule, in both DDP
modes, while the test process computes the references; a failing process's traceback is
reported. The example of docs/distributed.md runs under 2 processes too, against 1.
"""

from __future__ import annotations

import os
import pathlib
import re
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

if not dist.is_available():
    pytest.skip("this torch build has no torch.distributed", allow_module_level=True)

ROOT = pathlib.Path(__file__).resolve().parent.parent
WORLD = 2
STEPS = 3
TOL = 1e-9  # of the solves: the full-batch and half-batch adaptive solves agree far below 1e-6
MATCH = 1e-6  # parameters after each step, DDP against one process (float64)
LAUNCH_TIMEOUT_S = 240
F64 = torch.float64


# -- the models, data and training loop, shared by the processes and the reference ----------------


class MLP(torch.nn.Module):
    """f(t, y) = W₂ tanh(W₁ [y, t] + b₁) + b₂ (time-dependent, so t matters)."""

    def __init__(self, dim: int, width: int, scale: float = 1.0) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(dim + 1, width, dtype=F64)
        self.out = torch.nn.Linear(width, dim, dtype=F64)
        self.scale = scale

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.hidden(torch.cat([y, t.expand(*y.shape[:-1], 1)], dim=-1)))
        return self.scale * self.out(h)


class NeuralODE(torch.nn.Module):
    """The module DDP wraps: its forward is the whole solve, so DDP's forward sees the solve and
    its hooks see every parameter gradient the rule computes in its backward. A read-out after
    the solve puts plain autograd parameters in the same buckets as the rule's."""

    def __init__(self, rule, ts: torch.Tensor) -> None:
        super().__init__()
        self.field = MLP(2, 16)
        self.readout = torch.nn.Linear(2, 2, dtype=F64)
        self.rule, self.ts = rule, ts

    def forward(self, y0: torch.Tensor) -> torch.Tensor:
        import odeplug as op

        solver = op.Dopri5(rtol=TOL, atol=TOL)
        return self.readout(op.solve(op.ODEProblem(self.field, y0, self.ts), solver, self.rule).ys)


class NeuralSDE(torch.nn.Module):
    """dz = f(t, z) dt + g(t, z) ∘ dW (diagonal noise), solved as its Wong–Zakai ODE along the
    sampled path passed to forward."""

    def __init__(self, rule, ts: torch.Tensor) -> None:
        super().__init__()
        self.drift = MLP(2, 16)
        self.diffusion = MLP(2, 16, scale=0.3)
        self.rule, self.ts = rule, ts

    def forward(self, y0: torch.Tensor, path) -> torch.Tensor:
        import odeplug as op

        sde = op.SDEProblem(self.drift, self.diffusion, y0, self.ts)
        solver = op.Dopri5(rtol=TOL, atol=TOL)
        return op.solve(op.wong_zakai(sde, path), solver, self.rule).ys


BATCH = 8  # rows; process r of WORLD trains rows [r·BATCH/WORLD, (r+1)·BATCH/WORLD)
KL_TERMS = 4


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ts, y0, targets at ts[1:]) — the same on every process."""
    g = torch.Generator().manual_seed(1)
    y0 = torch.randn(BATCH, 2, generator=g, dtype=F64)
    targets = torch.randn(2, BATCH, 2, generator=g, dtype=F64)
    return torch.tensor([0.0, 0.5, 1.0], dtype=F64), y0, targets


def rank_generator(rank: int) -> torch.Generator:
    """The generator process ``rank`` draws its Karhunen–Loève coefficients from."""
    return torch.Generator().manual_seed(1000 + rank)


def sample_path(like: torch.Tensor, ts: torch.Tensor, generator: torch.Generator):
    import odeplug as op

    return op.sample(op.KarhunenLoeve(terms=KL_TERMS), like, ts[0], ts[-1], generator=generator)


def rows(rank: int, world: int) -> slice:
    return slice(rank * BATCH // world, (rank + 1) * BATCH // world)


def wrapped(model: torch.nn.Module, wrapper: str) -> torch.nn.Module:
    """``model`` as one unit of ``wrapper``: "ddp", "ddp-find_unused", "fsdp" (FSDP2's
    ``fully_shard``) or "fsdp1" (``FullyShardedDataParallel(use_orig_params=True)``)."""
    if wrapper.startswith("ddp"):
        return DistributedDataParallel(model, find_unused_parameters=wrapper == "ddp-find_unused")
    if wrapper == "fsdp":
        from torch.distributed.fsdp import fully_shard

        return fully_shard(model)
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel(model, use_orig_params=True, device_id=torch.device("cpu"))


def flat_parameters(model: torch.nn.Module, net: torch.nn.Module, wrapper: str) -> torch.Tensor:
    """The whole model's parameters, flat (FSDP's gathered from the shards: a collective)."""
    if wrapper == "fsdp":
        return torch.cat([p.full_tensor().reshape(-1) for p in model.parameters()]).detach().clone()
    if wrapper == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(net):
            return torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()


def train(kind: str, rule, rank: int = 0, world: int = 1, wrapper: str = "ddp") -> torch.Tensor:
    """Train ``STEPS`` SGD steps; the flat parameters after each step, ``(STEPS, n)``.

    ``world == 1``: one process, the full batch (for the SDE, row block r driven by rank r's
    paths). ``world > 1``: this process's rows, the model wrapped by ``wrapper`` (the process
    group is set up)."""
    ts, y0, targets = batch()
    torch.manual_seed(0)  # the same initial model everywhere (DDP would broadcast rank 0's anyway)
    model = NeuralODE(rule, ts) if kind == "ode" else NeuralSDE(rule, ts)
    net = model if world == 1 else wrapped(model, wrapper)
    mine = slice(None) if world == 1 else rows(rank, world)
    generators = [rank_generator(r) for r in range(WORLD)] if world == 1 else [rank_generator(rank)]
    optimiser = torch.optim.SGD(net.parameters(), lr=0.3)
    history = []
    for _ in range(STEPS):
        optimiser.zero_grad()
        if kind == "ode":
            ys = net(y0[mine])
        else:
            local = y0[rows(0, WORLD)]  # every process's rows have this shape
            paths = [sample_path(local, ts, g) for g in generators]
            path = paths[0] if world > 1 else stacked(paths)
            ys = net(y0[mine], path)
        loss = (ys[1:] - targets[:, mine]).pow(2).mean()
        loss.backward()
        optimiser.step()
        history.append(flat_parameters(model, net, "one" if world == 1 else wrapper))
    return torch.stack(history)


def stacked(paths):
    """One path whose rows are the rows of ``paths`` in order: their ξ concatenated along the
    batch (ξ has shape (terms, rows, channels)), the same interval."""
    import odeplug as op

    first = paths[0]
    return op.KarhunenLoevePath(torch.cat([p.xi for p in paths], dim=1), first.t0, first.t1)


def rules() -> dict:
    """Every registered gradient rule, as the gradient-truth matrix and ``odeplug bench`` see them."""
    from odeplug.bench import gradient_rules

    return gradient_rules()


#: (problem, wrapper) trained by the processes; the SDE differs from the ODE in its field only.
CASES = [("ode", "ddp"), ("ode", "ddp-find_unused"), ("ode", "fsdp"), ("ode", "fsdp1"), ("sde", "ddp")]


def refusal(wrapper: str) -> str:
    """The error of a backsolve rule when the vector field is an FSDP unit of its own."""
    import odeplug as op

    ts, y0, _ = batch()
    torch.manual_seed(0)
    model = NeuralODE(op.GQAdjoint(), ts)
    model.field = wrapped(model.field, wrapper)
    net = wrapped(model, wrapper)
    try:
        net(y0[rows(dist.get_rank(), WORLD)])
    except op.UnsupportedCombinationError as exc:
        return str(exc)
    return "no error"


# -- the processes: this file as a script ------------------------------------------------------


def worker(out: pathlib.Path) -> None:
    """One process of the group (torchrun's environment): every rule, every case; the
    parameter histories go to ``out/rank{r}.pt``."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {}
    try:
        for name, rule in rules().items():
            for kind, wrapper in CASES:
                results[(f"{kind}-{wrapper}", name)] = train(kind, rule, rank, world, wrapper)
        for wrapper in ("fsdp", "fsdp1"):
            results[("refusal", wrapper)] = refusal(wrapper)
    finally:
        dist.destroy_process_group()
    torch.save(results, out / f"rank{rank}.pt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_environment(rank: int, world: int, port: int) -> dict[str, str]:
    """What ``torchrun`` sets for process ``rank``, and one thread per process (CI has 2 cores)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    paths = [str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(paths))
    return env


def launch(argv: list[str], world: int, cwd: pathlib.Path) -> list[subprocess.Popen]:
    """Start ``world`` processes of ``python argv`` as torchrun would (stdout and stderr to files
    in ``cwd``, read by :func:`wait`)."""
    port = free_port()
    processes = []
    for rank in range(world):
        log = open(cwd / f"rank{rank}.log", "w")  # noqa: SIM115 - closed by wait()
        processes.append(subprocess.Popen([sys.executable, *argv], cwd=cwd, env=torchrun_environment(rank, world, port),
                                          stdout=log, stderr=subprocess.STDOUT))
        processes[-1].log = log  # type: ignore[attr-defined]
    return processes


def wait(processes: list[subprocess.Popen], cwd: pathlib.Path, timeout: float = LAUNCH_TIMEOUT_S) -> list[str]:
    """Wait for every process; if one fails (or time runs out) stop the others — they would wait
    for it in a collective forever — and fail with each failed process's output (its traceback)."""
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in processes):
        failed = any(p.poll() not in (None, 0) for p in processes)
        if failed or time.monotonic() > deadline:
            time.sleep(0.5 if failed else 0)  # let the others print their own errors first
            for p in processes:
                if p.poll() is None:
                    p.kill()
            break
        time.sleep(0.05)
    for p in processes:
        p.wait()
        p.log.close()  # type: ignore[attr-defined]
    logs = [(cwd / f"rank{rank}.log").read_text() for rank in range(len(processes))]
    report = [f"--- rank {rank} exited {p.returncode}:\n{log[-6000:]}"
              for rank, (p, log) in enumerate(zip(processes, logs)) if p.returncode != 0]
    if report:
        timed_out = time.monotonic() > deadline
        pytest.fail(("timed out after %.0f s; " % timeout if timed_out else "")
                    + "a process of the group failed:\n" + "\n".join(report), pytrace=False)
    return logs


# -- the tests ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def distributed(tmp_path_factory):
    """Every rule trained in every case by 2 DDP processes, and by one process on the full batch
    (the references, computed here while the processes run)."""
    out = tmp_path_factory.mktemp("ddp")
    processes = launch([__file__, "--worker", str(out)], WORLD, out)
    try:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            reference = {(kind, name): train(kind, rule) for name, rule in rules().items()
                         for kind in dict(CASES)}  # one process: no wrapper
        finally:
            torch.set_num_threads(threads)
    finally:
        wait(processes, out)
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]
    return reference, ranks


PARAMS = [(f"{kind}-{wrapper}", name) for name in sorted(rules()) for kind, wrapper in CASES]


@pytest.mark.parametrize("case,rule", PARAMS, ids=[f"{c}-{r}" for c, r in PARAMS])
def test_data_parallel_gives_the_full_batch_update_with_every_rule(distributed, case, rule):
    reference, ranks = distributed
    one_process = reference[(case.split("-")[0], rule)]
    for rank, got in enumerate(ranks):
        history = got[(case, rule)]
        assert not torch.equal(history[-1], history[0]), "training did not move the parameters"
        error = (history - one_process).abs().max().item()
        scale = one_process.abs().max().item()
        assert error <= MATCH * max(1.0, scale), (
            f"{rule}, {case}, rank {rank}: parameters after each of {STEPS} DDP steps differ from "
            f"one process on the full batch by {error:.3g} (a gradient reduced twice, or missed?)"
        )
    torch.testing.assert_close(ranks[0][(case, rule)], ranks[1][(case, rule)], rtol=0, atol=0)


@pytest.mark.parametrize("wrapper", ["fsdp", "fsdp1"])
def test_a_vector_field_that_is_an_fsdp_unit_of_its_own_is_refused_with_the_fix(distributed, wrapper):
    message = distributed[1][0][("refusal", wrapper)]
    assert "is an FSDP unit" in message and "Wrap the module whose forward calls odeplug.solve" in message, message


@pytest.mark.parametrize("rule", sorted(rules()))
def test_a_field_that_looks_at_freed_memory_does_not_crash_the_shell(rule):
    """FSDP's bookkeeping, run inside a unit's forward, asks the size of a parameter storage it
    freed. The shell watches f's first evaluation and copied every tensor read — a freed one
    too, which crashed the process (a segmentation fault, before the FSDP refusal could speak)."""
    import odeplug as op

    freed = torch.zeros(4, dtype=F64)
    freed.untyped_storage().resize_(0)
    w = torch.tensor(0.5, dtype=F64, requires_grad=True)

    def f(t, y):
        assert freed.untyped_storage().nbytes() == 0  # reads no element, as FSDP's checks
        return -w * y

    ts = torch.tensor([0.0, 1.0], dtype=F64)
    sol = op.solve(op.ODEProblem(f, torch.ones(3, dtype=F64), ts), op.Dopri5(rtol=1e-9, atol=1e-9), rules()[rule])
    (grad,) = torch.autograd.grad(sol.ys[-1].sum(), [w])
    assert grad.item() == pytest.approx(-3 * torch.exp(torch.tensor(-0.5)).item(), rel=1e-6)


def test_a_failing_process_is_reported_with_its_traceback(tmp_path):
    script = tmp_path / "fails.py"
    script.write_text("import os\nif os.environ['RANK'] == '1':\n    raise ValueError('rank one broke')\n"
                      "import time\ntime.sleep(60)\n")
    processes = launch([str(script)], 2, tmp_path)
    with pytest.raises(pytest.fail.Exception, match=r"(?s)rank 1 exited 1.*ValueError: rank one broke"):
        wait(processes, tmp_path, timeout=30)
    assert all(p.returncode is not None for p in processes)  # the waiting one was stopped


# -- the example of docs/distributed.md --------------------------------------------------------


def docs_example() -> str:
    page = (ROOT / "docs" / "distributed.md").read_text()
    return next(b for b in re.findall(r"```python\n(.*?)```", page, flags=re.S) if "DistributedDataParallel" in b)


def test_the_docs_example_under_torchrun_matches_one_process(tmp_path):
    """The page's script, run with the page's commands — ``torchrun --standalone
    --nproc-per-node 2`` and plain ``python`` — ends with the same parameters both ways."""
    script = tmp_path / "train_ddp.py"
    script.write_text(docs_example())
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    commands = {
        "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"],
        "python": [sys.executable],
    }
    running = {how: subprocess.Popen([*command, str(script), "--rule", "GQAdjoint", "--steps", "3",
                                      "--save", str(tmp_path / f"{how}.pt")],
                                     cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
               for how, command in commands.items()}
    for how, process in running.items():
        try:
            output, _ = process.communicate(timeout=LAUNCH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        assert process.returncode == 0, f"{how} train_ddp.py failed:\n{output[-6000:]}"
        assert "step 2: loss" in output, output
    one, two = (torch.load(tmp_path / f"{how}.pt") for how in ("python", "torchrun"))
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, rtol=MATCH, atol=MATCH, msg=lambda m: f"{name}: {m}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(pathlib.Path(sys.argv[2]))
    else:
        sys.exit(f"usage: {sys.argv[0]} --worker OUT_DIR (with torchrun's environment); "
                 "to run the tests: python -m pytest tests/test_distributed.py")
