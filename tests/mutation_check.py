"""Mutation check: every listed fault, planted in a copy of the package, makes a test fail.

Each mutation replaces one exact piece of source text (a claim's mechanism replaced by its
control, or a one-line fault in the product) and names the tests that must catch it:

    dict(name="econtrol-error-sign", covers="EControl's error update",
         path="torch_ext/efcomm/methods/ef21.py", old="...", new="...",
         tests=["tests/python/test_exact_steps.py::test_each_method_is_its_update_rule_bit_for_bit[econtrol]"])

The lists are ``MUTATIONS`` in tests/mutations_product.py (the hook, engine, state, methods,
hierarchy, statistics) and, when present, tests/mutations_claims.py (the simulator's claims).
For each mutation the script copies torch_ext/efcomm, tests/ and benchmarks/ into a temporary directory
(the built native library linked, not copied), applies the replacement (``old`` must occur
exactly once), and runs ``python -m pytest <tests> -q -x`` there with that copy first on
PYTHONPATH. A mutation is caught when a test fails on an assertion: pytest exits with 1 and
its first failure (read from its JUnit XML report) is a failed ``assert``, an AssertionError
(``torch.testing.assert_close`` too) or a ``pytest.fail`` / ``pytest.raises`` that did not
raise. A pass, a test that fails on another exception (a crash, not a check), an error in a
fixture, an import or collection error, or a timeout is not a catch. Before the mutations,
the same tests run once on the unmutated copy and must pass.

    python tests/mutation_check.py              # every mutation, two at a time
    python tests/mutation_check.py --list       # what is covered
    python tests/mutation_check.py -k hierarchy # the mutations whose name contains a word

Prints a table (mutation, what it covers, caught or missed, seconds) and exits non-zero when
a mutation is missed or the unmutated tests fail.
"""

import argparse
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "torch_ext" / "efcomm"
LISTS = ("mutations_product", "mutations_claims", "mutations_updates")  # tests/<name>.py, each optional but the first
KEYS = {"name", "covers", "path", "old", "new", "tests"}
COPIED = ("torch_ext/efcomm", "tests", "benchmarks")  # benchmarks: the FSDP tests' model (bench_fsdp.py)


class MutationError(ValueError):
    """A malformed mutation list, or a mutation that cannot be applied."""


def load_mutations(lists=LISTS) -> list:
    """The mutations of every list present (tests/mutations_product.py must be)."""
    mutations = []
    for module in lists:
        path = ROOT / "tests" / f"{module}.py"
        if not path.exists():
            if module == LISTS[0]:
                raise MutationError(f"mutation_check: {path} is missing")
            continue
        spec = importlib.util.spec_from_file_location(module, path)
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
        found = getattr(loaded, "MUTATIONS", None)
        if not isinstance(found, list) or not found:
            raise MutationError(f"mutation_check: {path} must define MUTATIONS, a non-empty list (got {found!r})")
        mutations.extend(dict(m, source=module) if isinstance(m, dict) else m for m in found)
    names = set()
    for m in mutations:
        check(m)
        if m["name"] in names:
            raise MutationError(f"mutation_check: two mutations are named {m['name']!r}")
        names.add(m["name"])
    return mutations


def check(m) -> None:
    """Raises MutationError naming the mutation and the field that is wrong."""
    if not isinstance(m, dict) or set(m) - {"source"} != KEYS:
        keys = sorted(m) if isinstance(m, dict) else None
        raise MutationError(
            f"mutation_check: a mutation ({m!r:.200}) must be a dict with keys {sorted(KEYS)}; got {keys}"
        )
    for key in ("name", "covers", "path", "old", "new"):
        if not isinstance(m[key], str) or (key != "new" and not m[key]):
            raise MutationError(
                f"mutation_check: mutation {m.get('name')!r}: {key} ({m[key]!r:.200}) must be a non-empty string"
            )
    if m["old"] == m["new"]:
        raise MutationError(f"mutation_check: mutation {m['name']!r}: new is the same text as old")
    if not any(m["path"].startswith(f"{top}/") for top in COPIED) or ".." in Path(m["path"]).parts:
        raise MutationError(
            f"mutation_check: mutation {m['name']!r}: path ({m['path']!r}) must be a file under {' or '.join(COPIED)}"
        )
    tests = m["tests"]
    if (
        not isinstance(tests, list)
        or not tests
        or not all(isinstance(t, str) and t.startswith("tests/") for t in tests)
    ):
        raise MutationError(
            f"mutation_check: mutation {m['name']!r}: tests ({tests!r}) must be a non-empty list of pytest ids under tests/"
        )
    source = ROOT / m["path"]
    if not source.is_file():
        raise MutationError(f"mutation_check: mutation {m['name']!r}: path ({m['path']!r}) is not a file")
    count = source.read_text().count(m["old"])
    if count != 1:
        raise MutationError(
            f"mutation_check: mutation {m['name']!r}: old ({m['old']!r:.120}) occurs {count} times in {m['path']}; "
            "it must occur exactly once"
        )


def native_libraries() -> list:
    libraries = sorted(PACKAGE.glob("_efcomm_ops*.so")) + sorted(PACKAGE.glob("_efcomm_ops*.pyd"))
    if not libraries:
        raise MutationError(f"mutation_check: no native library (_efcomm_ops*.so) in {PACKAGE}; build efcomm first")
    return libraries


def make_copy(workdir: Path) -> None:
    """torch_ext/efcomm, tests/ and benchmarks/ (and pyproject.toml, pytest's configuration) under
    ``workdir``, the native library linked."""
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyd", ".pytest_cache")
    for top in COPIED:
        shutil.copytree(ROOT / top, workdir / top, ignore=ignore, symlinks=False)
    shutil.copy2(ROOT / "pyproject.toml", workdir / "pyproject.toml")
    for library in native_libraries():
        (workdir / "torch_ext" / "efcomm" / library.name).symlink_to(library.resolve())


def apply(m: dict, workdir: Path) -> None:
    target = workdir / m["path"]
    text = target.read_text()
    if text.count(m["old"]) != 1:
        raise MutationError(f"mutation_check: mutation {m['name']!r}: old text not found exactly once in the copy")
    target.write_text(text.replace(m["old"], m["new"]))


PYTEST_ARGS = ["-q", "-x", "-rfE", "-p", "no:xdist", "-p", "no:cacheprovider"]
WRONG_PACKAGE = 97  # the child's exit code when another efcomm than the copy's was imported


class Job:
    """One pytest run on a copy of the package (mutated, or not for the baseline), in a
    child process: forked from this one, which has imported torch and pytest already
    (saves their import, seconds, per mutation), or with ``spawn`` a new interpreter."""

    def __init__(self, mutation, tests: list, spawn: bool) -> None:
        self.mutation, self.tests, self.spawn = mutation, tests, spawn
        self.tmp = tempfile.TemporaryDirectory(prefix="efcomm-mutation-")
        self.workdir = Path(self.tmp.name)
        make_copy(self.workdir)
        if mutation is not None:
            apply(mutation, self.workdir)
        self.log = self.workdir / "pytest.log"
        self.junit = self.workdir / "junit.xml"
        self.args = [*tests, *PYTEST_ARGS, f"--junitxml={self.junit}"]
        self.start = time.monotonic()
        self.pid = self._spawn() if spawn else self._fork()
        self.rc, self.seconds = None, None

    def _environment(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(self.workdir / "torch_ext")] + [p for p in [env.get("PYTHONPATH")] if p]
        )
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.pop("PYTEST_ADDOPTS", None)
        return env

    def _spawn(self) -> int:
        code = (
            "import sys, pytest; rc = int(pytest.main(sys.argv[1:])); "
            "package = getattr(sys.modules.get('efcomm'), '__file__', None) or ''; "
            f"sys.exit({WRONG_PACKAGE} if rc in (0, 1) and not package.startswith({str(self.workdir)!r}) else rc)"
        )
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", code, *self.args],
                cwd=self.workdir,
                env=self._environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self.process.pid

    def _fork(self) -> int:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            return pid
        rc = 98
        try:  # the child: never returns
            os.setsid()
            log = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.chdir(self.workdir)
            os.environ.clear()
            os.environ.update(self._environment())
            sys.path.insert(0, str(self.workdir / "torch_ext"))
            import pytest

            rc = int(pytest.main(self.args))
            package = getattr(sys.modules.get("efcomm"), "__file__", None) or ""
            if rc in (0, 1) and not package.startswith(str(self.workdir)):
                print(f"mutation_check: the tests imported efcomm from {package!r}, not from the copy")
                rc = WRONG_PACKAGE
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)

    def poll(self, timeout: float) -> bool:
        """Whether the run has ended (killing it, and its children, past ``timeout`` seconds)."""
        if self.rc is not None:
            return True
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            if time.monotonic() - self.start <= timeout:
                return False
            os.killpg(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.rc = "timeout"
        else:
            self.rc = os.waitstatus_to_exitcode(status)
        self.seconds = time.monotonic() - self.start
        self.output = self.log.read_text(errors="replace")
        self.failures = junit_failures(self.junit)
        self.tmp.cleanup()
        return True


def junit_failures(path: Path) -> list:
    """(test, kind, message) of every failed or erroring test of a pytest JUnit XML report:
    kind "failure" (the test body failed) or "error" (a fixture or collection failed)."""
    if not path.exists():
        return []
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError:
        return []
    found = []
    for case in root.iter("testcase"):
        for child in case:
            if child.tag in ("failure", "error"):
                found.append((case.get("name", ""), child.tag, child.get("message") or ""))
    return found


ASSERTION = ("assert ", "AssertionError", "Failed: ")  # pytest's messages of a failed check


def failed_on_an_assertion(failures: list) -> bool:
    """Whether the first failure is a test failing on a check, not on another exception."""
    return bool(failures) and failures[0][1] == "failure" and failures[0][2].startswith(ASSERTION)


def run_jobs(specs: list, jobs: int, timeout: float, spawn: bool) -> list:
    """Runs (mutation or None, tests) pairs, ``jobs`` at a time; returns the finished Jobs in order."""
    pending, running, done = list(enumerate(specs)), [], {}
    while pending or running:
        while pending and len(running) < jobs:
            index, (mutation, tests) = pending.pop(0)
            running.append((index, Job(mutation, tests, spawn)))
        for entry in list(running):
            if entry[1].poll(timeout):
                running.remove(entry)
                done[entry[0]] = entry[1]
        time.sleep(0.02)
    return [done[i] for i in range(len(specs))]


def first_failure(output: str) -> str:
    """The first failing test of a pytest run (its id, shortened), or ''."""
    match = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)
    if not match:
        return ""
    test = match.group(1)
    return test.split("::", 1)[1] if "::" in test else test


def verdict(job: Job) -> str:
    if job.rc == 1 and failed_on_an_assertion(job.failures):
        return "caught"
    if job.rc == 1:
        first = job.failures[0] if job.failures else ("", "no report", "")
        reason = first[2].split("\n")[0][:60]
        return f"ERROR (not an assertion: {first[1]} {reason})"
    if job.rc == 0:
        return "MISSED"
    if job.rc == "timeout":
        return "TIMEOUT"
    if job.rc == WRONG_PACKAGE:
        return "ERROR (another efcomm imported)"
    return f"ERROR (pytest rc {job.rc})"


def table(rows: list) -> str:
    headers = ("mutation", "covers", "result", "seconds", "caught by")
    cells = [(r["name"], r["covers"], r["result"], f"{r['seconds']:.1f}", r["by"]) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    widths[1] = min(widths[1], 60)
    widths[4] = min(widths[4], 70)

    def line(values):
        return "  ".join(str(v)[:w].ljust(w) for v, w in zip(values, widths)).rstrip()

    return "\n".join([line(headers), line("-" * w for w in widths)] + [line(c) for c in cells])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-j", "--jobs", type=int, default=2, help="mutations run at a time (default 2)")
    parser.add_argument("-k", "--match", default=None, help="only the mutations whose name contains this")
    parser.add_argument("--list", action="store_true", help="print the mutations and what they cover, run nothing")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run of the unmutated tests")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per pytest run (default 300)")
    parser.add_argument("--spawn", action="store_true", help="a new interpreter per run instead of a fork")
    parser.add_argument("-v", "--verbose", action="store_true", help="print pytest's output of every mutation")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs ({args.jobs}) must be at least 1")
    if args.timeout <= 0:
        parser.error(f"--timeout ({args.timeout}) must be positive")
    try:
        mutations = load_mutations()
        native_libraries()
    except MutationError as error:
        print(error, file=sys.stderr)
        return 2
    if args.match:
        mutations = [m for m in mutations if args.match in m["name"]]
        if not mutations:
            print(f"mutation_check: no mutation's name contains {args.match!r}", file=sys.stderr)
            return 2
    if args.list:
        for m in mutations:
            print(f"{m['name']:40s} {m['source']:18s} {m['covers']}")
        return 0
    if "efcomm" in sys.modules:
        print("mutation_check: efcomm is imported here already: the runs would not import the copies", file=sys.stderr)
        return 2
    spawn = args.spawn or not hasattr(os, "fork")
    if not spawn:
        import pytest  # noqa: F401  (imported once here, for every forked run)
        import torch  # noqa: F401
    start = time.monotonic()
    tests = sorted({t for m in mutations for t in m["tests"]})
    specs = ([] if args.no_baseline else [(None, tests)]) + [(m, m["tests"]) for m in mutations]
    finished = run_jobs(specs, args.jobs, args.timeout, spawn)
    base = None if args.no_baseline else finished.pop(0)
    rows = [
        dict(job.mutation, result=verdict(job), seconds=job.seconds, by=first_failure(job.output), output=job.output)
        for job in finished
    ]
    elapsed = time.monotonic() - start
    print(table(rows))
    failed = [r for r in rows if r["result"] != "caught"]
    for r in failed if not args.verbose else rows:
        print(f"\n---- {r['name']}: {r['result']} ({' '.join(r['tests'])})\n{r['output'][-3000:]}")
    if base is not None:
        status = "passed" if base.rc == 0 else f"FAILED: {verdict(base)}"
        print(f"\nunmutated: {len(tests)} test ids {status} in {base.seconds:.1f} s")
        if base.rc != 0:
            print(base.output[-3000:])
    caught = len(rows) - len(failed)
    print(f"{caught} of {len(rows)} mutations caught in {elapsed:.0f} s ({args.jobs} at a time)")
    return 0 if not failed and (base is None or base.rc == 0) else 1


if __name__ == "__main__":
    sys.exit(main())
