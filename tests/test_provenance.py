"""``provenance.git_commit``: where the git commit comes from."""

import shutil
import subprocess

import pytest

from autojudge_eval import provenance

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path):
    """A throwaway git checkout that looks like this project (an ``autojudge_eval/provenance.py`` inside)."""
    repo = tmp_path / "checkout"
    (repo / "autojudge_eval").mkdir(parents=True)
    (repo / "autojudge_eval" / "provenance.py").write_text("# stand-in\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    return repo


def test_git_commit_from_the_checkout_when_the_package_is_installed_elsewhere(
    tmp_path, checkout, monkeypatch
):
    # an installed wheel: the module lives outside any git checkout (tox, CI)
    site = tmp_path / "site-packages" / "autojudge_eval"
    site.mkdir(parents=True)
    monkeypatch.setattr(provenance, "__file__", str(site / "provenance.py"))
    monkeypatch.chdir(checkout)
    assert provenance.git_commit() == _git(checkout, "rev-parse", "HEAD")

    (checkout / "autojudge_eval" / "provenance.py").write_text("# changed\n")
    assert provenance.git_commit() == _git(checkout, "rev-parse", "HEAD") + "+dirty"


def test_git_commit_ignores_an_unrelated_working_directory(tmp_path, checkout, monkeypatch):
    site = tmp_path / "site-packages" / "autojudge_eval"
    site.mkdir(parents=True)
    monkeypatch.setattr(provenance, "__file__", str(site / "provenance.py"))
    (checkout / "autojudge_eval" / "provenance.py").unlink()  # a git repo, but not this project
    _git(checkout, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "drop")
    monkeypatch.chdir(checkout)
    assert provenance.git_commit() is None
