"""The A/B check's base side: which revision to compare against, its git worktree and its build.

The base is checked out with `git worktree add --detach` into AREA/src (default AREA:
build/regress-base, ignored by git) and built into AREA/build, both kept between runs: the next
run on the same base finds nothing to rebuild, and a new base rebuilds only what changed. Only the
three programs the check runs are built (upcase-server, upcase-load, uppercase_bench), Release,
from the base's own "release" CMake preset when it has one: about 30 s from scratch on 2 CPUs, so
no compiler cache is used.

AREA/lock (flock) keeps two tools/regress runs out of the same area; a worktree an interrupted run
left dirty (local edits, untracked files, a stale index.lock, a half-done checkout, a folder git no
longer knows) is put right before use; git commands that meet another git process's lock are
retried.
"""
from __future__ import annotations

import dataclasses
import fcntl
import os
import pathlib
import shlex
import shutil
import subprocess
import time

TARGETS = ("upcase-server", "upcase-load", "uppercase_bench")
# How long a git command may take, how often one that met a lock is retried, and how long to wait
# for another tools/regress that holds the area.
GIT_TIMEOUT_S = 300
GIT_LOCK_RETRIES = 5
AREA_LOCK_WAIT_S = 600
# A build of the base may take this long (a first build on 2 CPUs takes 2-3 minutes).
BUILD_TIMEOUT_S = 3600
# Marks in git's stderr that another git process holds a lock we need.
_LOCK_MARKS = ("index.lock", ".lock': File exists", "Unable to create", "cannot lock ref",
               "could not lock")


class BaseError(Exception):
    """A one-line reason the base could not be chosen, checked out or built (exit status 2)."""


def git(repo: pathlib.Path, *args: str, check: bool = True, retries: int = GIT_LOCK_RETRIES
        ) -> subprocess.CompletedProcess:
    """Runs git in `repo`; a failure caused by another git process's lock is retried."""
    cmd = ["git", "-C", str(repo), *args]
    for attempt in range(retries + 1):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=GIT_TIMEOUT_S,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise BaseError(f"`{shlex.join(cmd)}` did not finish within {GIT_TIMEOUT_S} s")
        if r.returncode == 0 or not check:
            return r
        if attempt < retries and any(m in r.stderr for m in _LOCK_MARKS):
            time.sleep(0.5 * 2 ** attempt)
            continue
        lines = r.stderr.strip().splitlines()
        why = next((x for x in lines if x.startswith(("fatal:", "error:"))),
                   lines[-1] if lines else f"exit status {r.returncode}")
        raise BaseError(f"`{shlex.join(cmd)}` failed: {why}")
    raise AssertionError("unreachable")


def rev_parse(repo: pathlib.Path, rev: str) -> str | None:
    r = git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None


@dataclasses.dataclass
class Base:
    rev: str       # full commit id
    spec: str      # what was asked or derived, e.g. "merge-base HEAD origin/main"
    how: str       # one sentence: how it was chosen

    @property
    def short(self) -> str:
        return self.rev[:10]


MAIN_REFS = ("main", "origin/main")


def choose_base(repo: pathlib.Path, requested: str | None) -> Base:
    """--base=REV as given; by default the merge base of HEAD and the main branch (the local
    `main` or `origin/main`, whichever is newer), or HEAD~1 when HEAD is on the main branch."""
    if requested:
        rev = rev_parse(repo, requested)
        if not rev:
            raise BaseError(f"base '{requested}' is not a commit in this repository "
                            "(fetch it, or pass another --base)")
        return Base(rev, requested, f"--base={requested}")
    head = rev_parse(repo, "HEAD")
    if not head:
        raise BaseError("HEAD is not a commit: nothing to compare")
    bases = []
    for ref in MAIN_REFS:
        if not rev_parse(repo, ref):
            continue
        r = git(repo, "merge-base", "HEAD", ref, check=False)
        if r.returncode == 0 and r.stdout.strip():
            bases.append((ref, r.stdout.strip()))
    if not bases:
        raise BaseError("no base given and no merge base of HEAD with main or origin/main "
                        "(a shallow clone? fetch the history, e.g. actions/checkout with "
                        "fetch-depth: 0, or pass --base=REV)")
    # The newest merge base: the one every other is an ancestor of.
    ref, mb = bases[0]
    for other_ref, other in bases[1:]:
        if other != mb and git(repo, "merge-base", "--is-ancestor", mb, other,
                               check=False).returncode == 0:
            ref, mb = other_ref, other
    if mb != head:
        return Base(mb, f"merge-base HEAD {ref}", f"the merge base of HEAD and {ref}")
    parent = rev_parse(repo, "HEAD~1")
    if not parent:
        raise BaseError(f"HEAD is {ref} and has no parent: pass --base=REV")
    return Base(parent, "HEAD~1", f"HEAD~1, since HEAD is on {ref} itself")


class BaseTree:
    """AREA/src (a detached worktree at the base) and AREA/build (its Release build)."""

    def __init__(self, repo: pathlib.Path, area: pathlib.Path, log=print):
        self.repo, self.area, self.log = repo, area, log
        self.src, self.build_dir = area / "src", area / "build"
        self.log_path = area / "build.log"
        self.stamp = area / "built-rev"
        self._lock_fd: int | None = None

    @property
    def bin_dir(self) -> pathlib.Path:
        return self.build_dir / "bin"

    # -- the area lock ---------------------------------------------------------------------------
    def lock(self, wait_s: float = AREA_LOCK_WAIT_S):
        self.area.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.area / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        deadline, said = time.monotonic() + wait_s, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise BaseError(f"another tools/regress (pid {holder}) holds {self.area}/lock "
                                    f"after {wait_s:.0f} s; wait for it or use --base-dir")
                if not said:
                    self.log(f"tools/regress: waiting for another tools/regress (pid {holder}) "
                             f"using {self.area}")
                    said = True
                time.sleep(1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def unlock(self):
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    # -- the worktree ----------------------------------------------------------------------------
    def _registered(self) -> bool:
        out = git(self.repo, "worktree", "list", "--porcelain").stdout
        want = self.src.resolve()
        return any(pathlib.Path(line[len("worktree "):]).resolve() == want
                   for line in out.splitlines() if line.startswith("worktree "))

    def checkout(self, rev: str):
        """Makes AREA/src a clean detached checkout of `rev`, creating or repairing it."""
        git(self.repo, "worktree", "prune")  # forget worktrees whose folder is gone
        if self.src.exists() and not (self._registered() and (self.src / ".git").is_file()):
            self.log(f"tools/regress: {self.src} is not a worktree of this repository; "
                     "recreating it")
            shutil.rmtree(self.src)
            git(self.repo, "worktree", "prune")
        if not self.src.exists():
            self.src.parent.mkdir(parents=True, exist_ok=True)
            git(self.repo, "worktree", "add", "--detach", "--force", str(self.src), rev)
        else:
            # We hold AREA/lock, so an index.lock here is a leftover of an interrupted run.
            lock = pathlib.Path(git(self.src, "rev-parse", "--git-path", "index.lock")
                                .stdout.strip())
            if not lock.is_absolute():
                lock = self.src / lock
            if lock.exists():
                self.log(f"tools/regress: removing {lock} left by an interrupted run")
                lock.unlink()
            dirty = git(self.src, "status", "--porcelain", "--ignored").stdout.strip()
            if dirty:
                self.log(f"tools/regress: {self.src} had local changes "
                         f"({len(dirty.splitlines())} path(s)); discarding them")
            # --force discards local edits; files already at `rev` keep their mtimes, so the
            # build stays incremental.
            git(self.src, "checkout", "--detach", "--force", "--quiet", rev)
            git(self.src, "clean", "-ffdxq")
        head = rev_parse(self.src, "HEAD")
        status = git(self.src, "status", "--porcelain").stdout.strip()
        if head != rev or status:
            raise BaseError(f"{self.src} is not a clean checkout of {rev[:10]} "
                            f"(HEAD {head and head[:10]}; {len(status.splitlines())} changed "
                            "path(s)); remove the folder and run again")

    # -- the build -------------------------------------------------------------------------------
    def commands(self, targets=TARGETS) -> list[list[str]]:
        configure = []
        if not (self.build_dir / "build.ninja").exists():
            if _has_release_preset(self.src):
                configure = ["cmake", "--preset", "release", "-B", str(self.build_dir)]
            else:
                configure = ["cmake", "-S", str(self.src), "-B", str(self.build_dir),
                             "-DCMAKE_BUILD_TYPE=Release"]
            configure += ["-G", "Ninja", "-DUPCASE_BUILD_TESTS=OFF"]
        build = ["cmake", "--build", str(self.build_dir), "-j", str(os.cpu_count() or 1),
                 "--target", *targets]
        return [c for c in (configure, build) if c]

    def build(self, rev: str, targets=TARGETS) -> list[list[str]]:
        """Builds `targets` at the checked-out base; returns the commands. Output goes to
        AREA/build.log; a failure raises BaseError naming the command and the log."""
        self.stamp.unlink(missing_ok=True)
        cmds = self.commands(targets)
        with open(self.log_path, "w") as log:
            for cmd in cmds:
                self.log(f"$ {shlex.join(cmd)}   (log: {self.log_path})")
                log.write(f"$ {shlex.join(cmd)}\n")
                log.flush()
                try:
                    r = subprocess.run(cmd, cwd=self.src, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, timeout=BUILD_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    raise BaseError(f"base {rev[:10]}: `{shlex.join(cmd)}` did not finish "
                                    f"within {BUILD_TIMEOUT_S} s; log: {self.log_path}")
                if r.returncode != 0:
                    if cmd[1] != "--build":
                        # A failed configure leaves a cache that would skip it next time.
                        shutil.rmtree(self.build_dir, ignore_errors=True)
                    raise BaseError(f"base {rev[:10]} does not build: `{shlex.join(cmd)}` "
                                    f"exited {r.returncode}; log: {self.log_path}")
        for t in targets:
            if not os.access(self.bin_dir / t, os.X_OK):
                raise BaseError(f"base {rev[:10]}: the build made no {self.bin_dir / t}; "
                                f"log: {self.log_path}")
        self.stamp.write_text(rev + "\n")
        return cmds

    def built_rev(self) -> str | None:
        try:
            return self.stamp.read_text().strip() or None
        except OSError:
            return None


def _has_release_preset(src: pathlib.Path) -> bool:
    import json
    try:
        presets = json.loads((src / "CMakePresets.json").read_text())
    except (OSError, ValueError):
        return False
    return any(p.get("name") == "release" for p in presets.get("configurePresets", []))
