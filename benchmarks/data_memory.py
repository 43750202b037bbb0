"""Memory of a run whose dataset is larger than one actor's share of the machine (issue 26): a memory-mapped
dataset read lazily, against the same images handed over as in-memory tensors.

    python benchmarks/data_memory.py [--gib 4] [--small-gib 0.5] [--participants 8] [--out benchmarks/results/data_memory]

Writes a .npy of uint8 images [n, 3, 64, 64] (numpy.lib.format.open_memmap for the header, then the pixels in
chunks through a plain file, so the writer stays small; class k of item g = g % 4 has a bright stripe at row
band k) of --gib GiB into --tmp, then runs four real swarm runs (kt_swarm.run, engine ray, a private Ray
instance; 8 tiny MLPs on 64 x 64 inputs, one actor each; one transfer epoch over --transfer items and
evaluations over --eval items of val and of test), each in a fresh process:

    lazy, GIB           data.kind python, factory own_data:memmap_images (tests/helpers): the splits are
                        Datasets over np.load(mmap_mode="r"); the driver reads lengths, item 0s and labels, each
                        actor calls the factory again and reads the items of its batches
    lazy random, GIB    the same with the mapping advised MADV_RANDOM (data_memory:memmap_random, this module)
    lazy, SMALL         own_data:memmap_images over the file's first --small-gib GiB
    tensors, SMALL      the same SMALL GiB given as (tensor, labels) pairs (data_memory:memmap_tensors): read
                        whole by the driver, put once into Ray's object store, which each actor maps
                        (a Dataset pickles its tensors as numpy arrays: Ray sends them out of band)

While a run lasts, every 0.5 s, each actor's and the driver's RssAnon, RssFile and RssShmem (/proc/PID/status),
the dataset file's pages resident in its mappings (/proc/PID/smaps) and its proportional set size (psutil) are
sampled (actors: the driver's descendants titled ray::ParticipantActor), with the PSS of the driver's whole
process tree (driver, Ray's servers and object store, actors). Reported: each actor's peak, their median and
maximum, the driver's peaks, the tree's peak PSS, and how much of the file the page cache held after the run
(fincore; the file's own pages are dropped from the cache, posix_fadvise DONTNEED, before each run). Writes
OUT.{md,json}. Tensors at GIB are not run: GIB in each of 8 actors is more than this machine has.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HELPERS = ROOT / "tests" / "helpers"
SHAPE = (3, 64, 64)
ITEM = 3 * 64 * 64
CLASSES = 4
MIB = 2**20


# ----------------------------------------------------------------------------- the data


def write_images(path: Path, n: int, chunk: int = 8192) -> None:
    """n patterned uint8 images [3, 64, 64] into a .npy, `chunk` at a time (the writer holds one chunk)."""
    import numpy as np
    from numpy.lib.format import open_memmap

    header = open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, *SHAPE))
    offset = header.offset
    del header  # the file exists at its full size; the pixels go in through a plain file
    rng = np.random.default_rng(0)
    band = SHAPE[1] // CLASSES
    with open(path, "r+b") as f:
        f.seek(offset)
        for start in range(0, n, chunk):
            count = min(chunk, n - start)
            images = rng.integers(0, 60, (count, *SHAPE), dtype=np.uint8)
            classes = (start + np.arange(count)) % CLASSES  # own_data.MemmapImages' labels: g % classes
            for k in range(CLASSES):
                images[classes == k, :, k * band:(k + 1) * band] += 150
            f.write(images.tobytes())
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)  # written pages leave the cache as we go
        f.flush()
        os.fsync(f.fileno())
    drop_cache(path)


def drop_cache(path: Path) -> None:
    """This file's pages out of the page cache (nothing else's)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cached_mib(path: Path) -> float | None:
    """How much of this file is in the page cache (util-linux fincore)."""
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "-o", "RES", str(path)],
                             capture_output=True, text=True, timeout=60)
        return int(out.stdout.split()[0]) / MIB
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def memmap_tensors(path: str, train: int, test: int, classes: int = CLASSES) -> dict:
    """The factory of the in-memory contrast: own_data.memmap_images' splits, read whole into (tensor, labels)."""
    import numpy as np
    import torch

    array = np.load(path, mmap_mode="r")
    out = {}
    for split, (a, b) in {"train": (0, train), "test": (train, train + test)}.items():
        out[split] = (torch.from_numpy(np.array(array[a:b])), torch.arange(a, b) % classes)
    return out


def memmap_random(path: str, train: int, test: int, classes: int = CLASSES) -> dict:
    """own_data.memmap_images with the mapping advised MADV_RANDOM: a page fault reads its page, not the
    device's read-ahead window around it (8 MiB on this machine's disk)."""
    import mmap

    import own_data  # tests/helpers

    out = own_data.memmap_images(path, train, test, classes)
    for split in ("train", "test"):
        out[split].array._mmap.madvise(mmap.MADV_RANDOM)  # numpy's memmap keeps its mmap.mmap as _mmap
    return out


# ----------------------------------------------------------------------------- one run, in a fresh process


def status(pid: int) -> dict[str, int]:
    """RssAnon, RssFile, RssShmem and VmHWM of a process, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile", "RssShmem", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def mapped(pid: int, path: str) -> int:
    """Bytes of `path` resident in this process's mappings of it (the Rss of its lines in /proc/PID/smaps)."""
    total, inside = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if not line[0].isupper():  # a mapping's header: "start-end perms offset dev inode [path]"
                inside = line.rstrip().endswith(path)
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1]) * 1024
    return total


class Sampler(threading.Thread):
    """Every `every` s: each actor's and the driver's memory (the peak of each figure kept), the dataset file's
    pages mapped in each, and the PSS of the whole process tree."""

    def __init__(self, path: str, every: float = 0.5):
        super().__init__(daemon=True)
        self.path, self.every, self.stop = path, every, threading.Event()
        self.actors, self.driver, self.tree_pss, self.samples = {}, {}, [], 0
        self.last: dict[int, dict] = {}  # each actor's figures at its last sample (settled: after transients)

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    pss = p.memory_full_info().pss
                    total += pss
                    title = p.cmdline()
                    if p.pid == me.pid or (title and title[0].startswith("ray::ParticipantActor")):
                        figures = {**status(p.pid), "PSS": pss, "Data": mapped(p.pid, self.path)}
                        peak = self.driver if p.pid == me.pid else self.actors.setdefault(p.pid, {})
                        if p.pid != me.pid and figures.get("RssAnon"):  # not a process already torn down
                            self.last[p.pid] = figures
                        for key, value in figures.items():
                            peak[key] = max(peak.get(key, 0), value)
                except (psutil.Error, OSError):  # gone between the listing and the read
                    continue
            self.tree_pss.append(total)
            self.samples += 1
            self.stop.wait(self.every)


def one(spec: dict) -> dict:
    """(In a fresh process.) One run with the sampler on; its figures."""
    import ray

    import kt_swarm
    from kt_swarm.swarm import start_private_ray

    path = spec["path"]
    raw = {
        "participants": [{"name": f"p{i}", "model": "faulty_models:tiny_mlp", "lr": 1e-3,
                          "model_args": {"img_size": 64, "hidden": 16 + 4 * i}} for i in range(spec["participants"])],
        "data": {"kind": "python", "factory": spec["factory"],
                 "args": {"path": path, "train": spec["train"], "test": spec["test"], "classes": CLASSES},
                 "transfer_samples": spec["transfer"], "eval_samples": spec["eval"]},
        "transfer": {"epochs": 1, "batch_size": spec["batch"]},
        "eval_batch_size": 256,
        "control": False,
        "seed": 0,
    }
    # The actors import the test models (tests/helpers) and this module's factory (benchmarks/).
    start_private_ray(num_cpus=2, log_to_driver=False,
                      runtime_env={"env_vars": {"PYTHONPATH": f"{HELPERS}:{ROOT / 'benchmarks'}"}})
    sampler = Sampler(path)
    sampler.start()
    t = time.perf_counter()
    try:
        result = kt_swarm.run(raw, out=spec["run_dir"], engine="ray")
    finally:
        wall = time.perf_counter() - t
        sampler.stop.set()
        sampler.join()
        ray.shutdown()
    actors = list(sampler.actors.values())
    summary = result.summary

    def across(key, of=actors):
        values = [a.get(key, 0) / MIB for a in of]
        return {"median": statistics.median(values), "max": max(values)} if values else None

    return {"wall_s": wall, "actors": len(actors), "samples": sampler.samples,
            "actor_rss_anon_mib": across("RssAnon"), "actor_rss_file_mib": across("RssFile"),
            "actor_rss_shmem_mib": across("RssShmem"), "actor_pss_mib": across("PSS"), "actor_hwm_mib": across("VmHWM"),
            "actor_data_mapped_mib": across("Data"), "actor_rss_anon_last_mib": across("RssAnon", list(sampler.last.values())),
            "driver_hwm_mib": status(os.getpid())["VmHWM"] / MIB, "tree_pss_peak_mib": max(sampler.tree_pss) / MIB,
            "driver_peak_mib": {k: v / MIB for k, v in sampler.driver.items()},
            "seconds": summary.get("seconds")}


# ----------------------------------------------------------------------------- the three runs


def run_one(spec: dict, timeout: int) -> dict:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(HELPERS), str(ROOT / "benchmarks")])}
    drop_cache(Path(spec["path"]))
    cmd = [sys.executable, __file__, "--one", json.dumps(spec)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    row = json.loads(lines[-1])
    row["file_cached_after_mib"] = cached_mib(Path(spec["path"]))
    return row


def counts(gib: float, test_fraction: float = 0.1) -> tuple[int, int]:
    n = int(gib * 2**30) // ITEM
    test = int(n * test_fraction)
    return n - test, test


def read_ahead_kb(path: Path) -> str:
    """The read-ahead of the block device holding `path` (what a page fault on a mapping reads around it)."""
    try:
        dev = os.stat(path).st_dev
        block = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
        ra = block / "queue" / "read_ahead_kb"
        if not ra.exists():  # a partition: its disk's queue
            ra = block.resolve().parent / "queue" / "read_ahead_kb"
        return ra.read_text().strip()
    except OSError:
        return "?"


def mib(r: dict, key: str, both: bool = True) -> str:
    v = r[key]
    return f"{v['median']:,.0f} / {v['max']:,.0f}" if both else f"{v['max']:,.0f}"


def report(args, rows: list[dict], file_mib: float, seconds: dict, ra: str) -> str:
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.split(":", 1)[-1].strip()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    share = mem / args.participants
    cmd = "python benchmarks/data_memory.py" + "".join(
        f" --{k.replace('_', '-')} {v:g}" for k, v in vars(args).items() if k in DEFAULTS and v != DEFAULTS[k])
    md = ["# Memory of a run whose dataset is larger than an actor's share (benchmarks/data_memory.py)", "",
          f"{cpu}, {os.cpu_count()} cores, {mem:.1f} GiB of memory: one actor's share with {args.participants} "
          f"actors is {share:.1f} GiB; the disk's read-ahead {ra} KiB. `{cmd}`: {seconds['write']:.0f} s to write "
          f"the {file_mib / 1024:.2f} GiB file, {seconds['total']:.0f} s in all. Each run: kt_swarm.run, engine ray "
          f"(a private instance, 2 CPUs), {args.participants} tiny MLPs (64 x 64 x 3 inputs) one actor each, one "
          f"transfer epoch over {args.transfer:,} items (data.transfer_samples) in batches of {args.batch}, "
          f"evaluations over {args.eval:,} items of val and of test (data.eval_samples). The file's pages are "
          "dropped from the page cache before each run. Each figure is a process's peak over samples every 0.5 s "
          "(MiB); for the actors, the median / max over them; *at the end*: at an actor's last sample, before the "
          "run closes it (settled, after a transient such as deserialising). *Dataset mapped*: the file's pages resident in the "
          "process's mappings of it (/proc/PID/smaps); *RssAnon*: its private memory; *tree PSS*: the driver, "
          "Ray's servers and object store and the actors together; *page cache*: the file's pages cached after "
          "the run (fincore).", "",
          "| data | dataset | actor RssAnon | actor RssAnon at the end | actor dataset mapped | actor RssShmem (max) | actor PSS | "
          "driver RssAnon | driver VmHWM | tree PSS | page cache after | run (s) |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            md.append(f"| {r['name']} | {r['dataset_mib']:,.0f} | {r['error']} |||||||||")
            continue
        cached = r.get("file_cached_after_mib")
        md.append(f"| {r['name']} | {r['dataset_mib']:,.0f} | {mib(r, 'actor_rss_anon_mib')} | "
                  f"{mib(r, 'actor_rss_anon_last_mib')} | "
                  f"{mib(r, 'actor_data_mapped_mib')} | {mib(r, 'actor_rss_shmem_mib', False)} | "
                  f"{mib(r, 'actor_pss_mib')} | {r['driver_peak_mib']['RssAnon']:,.0f} | {r['driver_hwm_mib']:,.0f} | "
                  f"{r['tree_pss_peak_mib']:,.0f} | {'?' if cached is None else f'{cached:,.0f}'} | {r['wall_s']:.0f} |")
    ok = {r["key"]: r for r in rows if "error" not in r}
    if {"big", "small", "tensors"} <= set(ok):
        big, small, tensors = ok["big"], ok["small"], ok["tensors"]
        grow = tensors["actor_rss_anon_mib"]["median"] - small["actor_rss_anon_mib"]["median"]
        settled = tensors["actor_rss_anon_last_mib"]["median"] - small["actor_rss_anon_last_mib"]["median"]
        md += ["", f"**Reading.** Memory-mapped and read lazily, the {big['dataset_mib'] / 1024:.3g} GiB dataset ("
               f"{'more' if big['dataset_mib'] / 1024 > share else 'less'} than an actor's {share:.1f} GiB share; {args.participants} private copies would need "
               f"{args.participants * big['dataset_mib'] / 1024:.3g} GiB) costs each actor what the "
               f"{small['dataset_mib'] / 1024:.3g} GiB one does: private memory "
               f"{big['actor_rss_anon_mib']['median']:,.0f} against {small['actor_rss_anon_mib']['median']:,.0f} MiB "
               f"(median), and {big['actor_data_mapped_mib']['median']:,.0f} MiB of the file mapped (the pages "
               f"around the items it read, shared through the page cache). The driver mapped "
               f"{big['driver_peak_mib']['Data']:.2f} MiB of the file (item 0s; the labels come from the Dataset's "
               f"`targets`), and the whole run's PSS peaked at "
               f"{big['tree_pss_peak_mib'] / 1024:.2f} GiB against {small['tree_pss_peak_mib'] / 1024:.2f}. Given as "
               f"tensors, the {small['dataset_mib']:,.0f} MiB add {grow:,.0f} MiB of private memory to every actor at "
               f"its peak and {settled:,.0f} MiB at the end (each maps the object store's one copy, {tensors['actor_rss_shmem_mib']['max']:,.0f} MiB of "
               f"it resident and shared, instead of unpickling its own), and {tensors['driver_hwm_mib'] - small['driver_hwm_mib']:,.0f} MiB to "
               f"the driver's peak: the run's PSS grew by "
               f"{(tensors['tree_pss_peak_mib'] - small['tree_pss_peak_mib']) / small['dataset_mib']:.1f} times the "
               f"dataset."]
        if "random" in ok:
            rnd = ok["random"]
            md += ["", f"The page cache is where the reads land: a fault on a mapped page reads the disk's read-ahead "
                   f"window around it ({ra} KiB here), so the run's few thousand random items brought "
                   f"{big.get('file_cached_after_mib') or 0:,.0f} MiB of the file into the cache (shared and "
                   f"reclaimable, not any process's; but charged to a container's memory cgroup, and read from disk). "
                   f"The same factory with the mapping advised random (`madvise(MADV_RANDOM)`, "
                   f"data_memory:memmap_random) brought {rnd.get('file_cached_after_mib') or 0:,.0f} MiB, and each "
                   f"actor mapped {rnd['actor_data_mapped_mib']['median']:,.0f} MiB of it: for a dataset read in "
                   f"random order from a memory map, advise it random."]
    md += ["", "**What is read where** (kt_swarm/sources.py). With `data.kind: python` and Datasets, the driver calls "
           "the factory and reads each split's length, its item 0 (train's twice, to see it is deterministic), the "
           "labels (a Dataset's `targets` or `labels`, else one pass over its items; dense tasks: the val and test "
           "masks or maps instead) and, for a zoo cache key, 16 items; what goes into Ray's object store is the labels and the splits' ids, not the Datasets. Each actor "
           "calls the factory again (np.load mmap_mode='r': a mapping, nothing read), checks the lengths and train "
           "item 0 against the driver's, then reads only the items of the batches and evaluation passes it runs. "
           "Splits given as tensors (and data.kind fashion_mnist, folder, scenes) are one uint8 tensor read whole "
           "by the driver and put once into the object store, whose copy each actor maps read-only (a Dataset "
           "pickles its tensors as numpy arrays, which Ray sends out of band; until f9a658d they went in band and "
           "each actor unpickled a private copy: 1,255 MiB of private memory per actor at the peak here, where the "
           "lazy 0.5 GiB took 480). The table of "
           "every kind: docs/own-data.md, What is read where."]
    return "\n".join(md) + "\n"


DEFAULTS = {"gib": 4.0, "small_gib": 0.5, "participants": 8, "transfer": 2048, "eval": 1024, "batch": 64}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=DEFAULTS["gib"], help="the big (lazy) dataset's size")
    ap.add_argument("--small-gib", type=float, default=DEFAULTS["small_gib"], help="the size both kinds are run at")
    ap.add_argument("--participants", type=int, default=DEFAULTS["participants"])
    ap.add_argument("--transfer", type=int, default=DEFAULTS["transfer"], help="data.transfer_samples")
    ap.add_argument("--eval", type=int, default=DEFAULTS["eval"], help="data.eval_samples")
    ap.add_argument("--batch", type=int, default=DEFAULTS["batch"], help="transfer.batch_size")
    ap.add_argument("--tmp", default=None, help="where the .npy and the run directories go (default: a new "
                                                 "folder under $TMPDIR, removed at the end)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data_memory"))
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--render", action="store_true", help="write OUT.md again from OUT.json, measuring nothing")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(json.loads(args.one))))
        return
    if args.render:
        out = Path(args.out)
        saved = json.loads(out.with_suffix(".json").read_text())
        was = argparse.Namespace(**saved["args"])
        big = next(r for r in saved["rows"] if r["key"] == "big")
        out.with_suffix(".md").write_text(report(was, saved["rows"], big["dataset_mib"], saved["seconds"],
                                                 saved["read_ahead_kb"]))
        print(out.with_suffix(".md").read_text())
        return
    if args.small_gib > args.gib:
        ap.error("--small-gib is a prefix of the --gib file: at most --gib")
    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="kt_swarm-data-memory-"))
    tmp.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(tmp).free / 2**30
    if free < args.gib + 2:
        sys.exit(f"{tmp}: {free:.1f} GiB free, the dataset needs {args.gib:.1f} GiB and 2 GiB to spare")
    t0 = time.perf_counter()
    try:
        path = tmp / "images.npy"
        train, test = counts(args.gib)
        print(f"writing {train + test:,} images ({(train + test) * ITEM / 2**30:.2f} GiB) to {path}", flush=True)
        write_images(path, train + test)
        t_write = time.perf_counter() - t0
        small_train, small_test = counts(args.small_gib)
        base = {"path": str(path), "participants": args.participants, "transfer": args.transfer, "eval": args.eval,
                "batch": args.batch}
        configs = [("big", f"lazy (memory-mapped), {args.gib:g} GiB", "own_data:memmap_images", train, test),
                   ("random", f"lazy, advised random, {args.gib:g} GiB", "data_memory:memmap_random", train, test),
                   ("small", f"lazy (memory-mapped), {args.small_gib:g} GiB", "own_data:memmap_images", small_train,
                    small_test),
                   ("tensors", f"tensors (in memory), {args.small_gib:g} GiB", "data_memory:memmap_tensors",
                    small_train, small_test)]
        rows = []
        for key, name, factory, tr, te in configs:
            spec = {**base, "factory": factory, "train": tr, "test": te, "run_dir": str(tmp / f"run-{key}")}
            row = {"key": key, "name": name, "factory": factory, "dataset_mib": (tr + te) * ITEM / MIB, "items": tr + te,
                   **run_one(spec, args.timeout)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        seconds = {"write": t_write, "total": time.perf_counter() - t0}
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        ra = read_ahead_kb(path)
        out.with_suffix(".json").write_text(json.dumps({"args": {k: v for k, v in vars(args).items()
                                                                 if k not in ("one", "render")},
                                                        "read_ahead_kb": ra, "seconds": seconds, "rows": rows}, indent=1))
        out.with_suffix(".md").write_text(report(args, rows, (train + test) * ITEM / MIB, seconds, ra))
        print(out.with_suffix(".md").read_text())
    finally:
        if args.tmp is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
