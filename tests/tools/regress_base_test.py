"""tools/upcase/regress/base.py in a throwaway git repository: which base is chosen, the base's
worktree (created, reused, repaired after an interrupted run), its build (a tiny CMake project
with the three program names, so the real configure and build commands run in seconds;
incremental on the second run; a failing build named with its log), the area lock and git's
lock retries. `real` additionally builds this project's upcase-server at HEAD in a worktree of
a temporary clone.

    /usr/bin/python3 tests/tools/regress_base_test.py [real]
"""
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tools"))

from upcase.regress import base as rb  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY_CMAKE = """cmake_minimum_required(VERSION 3.25)
project(tiny LANGUAGES CXX)
set(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
foreach(t upcase-server upcase-load uppercase_bench)
  add_executable(${t} main.cc)
endforeach()
"""
TINY_PRESETS = """{"version": 6, "configurePresets": [{"name": "release",
  "binaryDir": "${sourceDir}/build/release", "cacheVariables": {"CMAKE_BUILD_TYPE": "Release"}}]}
"""


def sh(cwd, *cmd) -> str:
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True,
                          timeout=120).stdout.strip()


def commit(repo: pathlib.Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (repo / name).write_text(text)
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message)
    return sh(repo, "git", "rev-parse", "HEAD")


class RepoCase(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="regress-base-test-")
        self.repo = pathlib.Path(self.tmp.name) / "repo"
        self.repo.mkdir()
        sh(self.repo, "git", "init", "-q", "-b", "main")
        self.c1 = commit(self.repo, {".gitignore": "/build/\n", "CMakeLists.txt": TINY_CMAKE,
                                     "CMakePresets.json": TINY_PRESETS,
                                     "main.cc": "int main() { return 0; }\n"}, "one")
        self.c2 = commit(self.repo, {"main.cc": "int main() { return 2 - 2; }\n"}, "two")
        self.area = self.repo / "build" / "regress-base"
        self.logs = []

    def tearDown(self):
        self.tmp.cleanup()

    def tree(self):
        return rb.BaseTree(self.repo, self.area, log=self.logs.append)


class ChooseBaseTest(RepoCase):
    def test_on_main_the_parent(self):
        b = rb.choose_base(self.repo, None)
        self.assertEqual((b.rev, b.spec), (self.c1, "HEAD~1"))
        self.assertIn("HEAD is on main", b.how)

    def test_on_a_branch_the_merge_base(self):
        sh(self.repo, "git", "checkout", "-qb", "feature")
        commit(self.repo, {"f.txt": "x\n"}, "feature work")
        sh(self.repo, "git", "checkout", "-q", "main")
        c3 = commit(self.repo, {"m.txt": "y\n"}, "main moves on")
        sh(self.repo, "git", "checkout", "-q", "feature")
        b = rb.choose_base(self.repo, None)
        self.assertEqual((b.rev, b.spec), (self.c2, "merge-base HEAD main"))
        self.assertNotEqual(b.rev, c3)

    def test_a_newer_origin_main_wins(self):
        # A stale local main and an origin/main that includes the feature's parent.
        sh(self.repo, "git", "checkout", "-qb", "feature")
        sh(self.repo, "git", "update-ref", "refs/heads/main", self.c1)
        sh(self.repo, "git", "update-ref", "refs/remotes/origin/main", self.c2)
        commit(self.repo, {"f.txt": "x\n"}, "feature work")
        b = rb.choose_base(self.repo, None)
        self.assertEqual((b.rev, b.spec), (self.c2, "merge-base HEAD origin/main"))

    def test_explicit_base(self):
        self.assertEqual(rb.choose_base(self.repo, "HEAD~1").rev, self.c1)
        with self.assertRaisesRegex(rb.BaseError, "'nope' is not a commit"):
            rb.choose_base(self.repo, "nope")

    def test_no_main_and_no_parent(self):
        sh(self.repo, "git", "checkout", "-q", "--orphan", "lonely")
        commit(self.repo, {"x": "1\n"}, "root")
        sh(self.repo, "git", "branch", "-D", "main")
        with self.assertRaisesRegex(rb.BaseError, "no merge base.*--base=REV"):
            rb.choose_base(self.repo, None)


class WorktreeBuildTest(RepoCase):
    def build(self, rev):
        t = self.tree()
        t.lock()
        try:
            t.checkout(rev)
            return t, t.build(rev)
        finally:
            t.unlock()

    def test_build_then_nothing_to_rebuild(self):
        t, cmds = self.build(self.c1)
        self.assertEqual(cmds[0][:3], ["cmake", "--preset", "release"])  # the base's preset
        self.assertEqual(rb.rev_parse(t.src, "HEAD"), self.c1)
        server = t.bin_dir / "upcase-server"
        self.assertTrue(os.access(server, os.X_OK))
        self.assertEqual(t.built_rev(), self.c1)
        before = server.stat().st_mtime_ns
        # The main worktree is untouched: still on main at c2, clean.
        self.assertEqual(rb.rev_parse(self.repo, "HEAD"), self.c2)
        self.assertEqual(sh(self.repo, "git", "status", "--porcelain"), "")

        t, cmds = self.build(self.c1)
        self.assertEqual(len(cmds), 1, "configured again")  # the build folder was kept
        self.assertIn("no work to do", t.log_path.read_text())
        self.assertEqual(server.stat().st_mtime_ns, before)

        # Another base: only what changed is rebuilt, in the same folders.
        t, _ = self.build(self.c2)
        self.assertEqual(t.built_rev(), self.c2)
        self.assertIn("main.cc", t.log_path.read_text())

    def test_recovers_a_worktree_left_dirty(self):
        t, _ = self.build(self.c1)
        (t.src / "main.cc").write_text("broken by an interrupted run\n")
        (t.src / "stray.o").write_text("x")
        lock = pathlib.Path(sh(t.src, "git", "rev-parse", "--absolute-git-dir")) / "index.lock"
        lock.write_text("")
        t, _ = self.build(self.c2)
        self.assertEqual(sh(t.src, "git", "status", "--porcelain", "--ignored"), "")
        self.assertFalse(lock.exists())
        self.assertEqual(rb.rev_parse(t.src, "HEAD"), self.c2)
        self.assertTrue(any("discarding" in line for line in self.logs), self.logs)

    def test_recovers_a_deleted_or_foreign_folder(self):
        t, _ = self.build(self.c1)
        subprocess.run(["rm", "-rf", str(t.src)], check=True)  # registered, but gone
        t, _ = self.build(self.c2)
        self.assertEqual(rb.rev_parse(t.src, "HEAD"), self.c2)
        subprocess.run(["rm", "-rf", str(t.src)], check=True)
        t.src.mkdir()
        (t.src / "junk").write_text("not a worktree")
        t, _ = self.build(self.c1)
        self.assertEqual(rb.rev_parse(t.src, "HEAD"), self.c1)

    def test_a_base_that_does_not_build(self):
        bad = commit(self.repo, {"main.cc": "int main() { return nope; }\n"}, "broken")
        with self.assertRaises(rb.BaseError) as e:
            self.build(bad)
        msg = str(e.exception)
        self.assertIn(f"base {bad[:10]} does not build", msg)
        self.assertIn("cmake --build", msg)
        self.assertIn(str(self.area / "build.log"), msg)
        self.assertIn("nope", (self.area / "build.log").read_text())
        self.assertIsNone(self.tree().built_rev())


class LockTest(RepoCase):
    def test_a_second_run_waits_then_gives_up(self):
        first = self.tree()
        first.lock()
        try:
            t0 = time.monotonic()
            with self.assertRaisesRegex(rb.BaseError, f"pid {os.getpid()}"):
                self.tree().lock(wait_s=0.5)
            self.assertLess(time.monotonic() - t0, 10)
        finally:
            first.unlock()
        second = self.tree()
        second.lock(wait_s=0.5)  # free again
        second.unlock()

    def test_git_retries_while_another_git_holds_the_index(self):
        (self.repo / "new.txt").write_text("x\n")
        lock = self.repo / ".git" / "index.lock"
        lock.write_text("")
        threading.Timer(1.0, lock.unlink).start()
        rb.git(self.repo, "add", "new.txt")  # fails at first: index.lock exists
        self.assertIn("new.txt", sh(self.repo, "git", "diff", "--cached", "--name-only"))
        lock.write_text("")
        try:
            with self.assertRaisesRegex(rb.BaseError, "index.lock"):
                rb.git(self.repo, "add", "new.txt", retries=1)
        finally:
            lock.unlink()


class RealProjectTest(unittest.TestCase):
    """This project's own base build path: a temporary clone at HEAD with a throwaway commit on
    top, HEAD~1 (this tree's HEAD) checked out in a worktree and upcase-server built there."""

    def test_builds_this_project_in_a_worktree(self):
        with tempfile.TemporaryDirectory(prefix="regress-real-") as tmp:
            clone = pathlib.Path(tmp) / "clone"
            sh(tmp, "git", "clone", "-q", "--shared", "--no-checkout", str(ROOT), str(clone))
            head = rb.rev_parse(ROOT, "HEAD")
            sh(clone, "git", "checkout", "-q", "--detach", head)
            commit(clone, {"THROWAWAY": "a commit that exists only in this clone\n"}, "throwaway")
            base = rb.choose_base(clone, "HEAD~1")
            self.assertEqual(base.rev, head)
            t = rb.BaseTree(clone, clone / "build" / "regress-base", log=lambda _: None)
            t.lock()
            try:
                t.checkout(base.rev)
                t.build(base.rev, targets=("upcase-server",))
            finally:
                t.unlock()
            out = subprocess.run([str(t.bin_dir / "upcase-server"), "--help"],
                                 capture_output=True, text=True, timeout=10)
            self.assertIn("Backends", out.stdout + out.stderr)
            cache = (t.build_dir / "CMakeCache.txt").read_text()
            self.assertIn("CMAKE_BUILD_TYPE:STRING=Release", cache)


if __name__ == "__main__":
    if "real" in sys.argv[1:]:
        sys.argv.remove("real")
        unittest.main(defaultTest="RealProjectTest")
    else:
        unittest.main(argv=sys.argv[:1] + sys.argv[1:],
                      defaultTest=["ChooseBaseTest", "WorktreeBuildTest", "LockTest"])
