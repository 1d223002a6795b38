"""The documentation site builds strictly, the version agrees with the changelog, and a
wheel built from the checkout holds the package and its data."""

import importlib.metadata
import os
import pathlib
import re
import subprocess
import sys
import zipfile

import clockwork

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_site_builds_strictly_with_every_page_and_the_api(tmp_path):
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("index.html"))
    assert len(pages) >= 12, pages
    for page in ("getting_started/index.html", "concepts/index.html", "model/index.html",
                 "tutorials/hierarchy_in_your_model/index.html", "own_videos/index.html",
                 "reproduce/mmnist/index.html", "changelog/index.html", "api/cells/index.html"):
        assert page in pages
    # The API pages are generated from the docstrings.
    nets = (site / "api" / "nets" / "index.html").read_text()
    assert "conv_layout" in nets and "nearest sizes that work" in nets
    assert "VideoFolder" in (site / "api" / "data" / "index.html").read_text()


def test_version_and_changelog_agree():
    changelog = (ROOT / "docs" / "changelog.md").read_text()
    newest = re.search(r"^## (\d+\.\d+\.\d+)", changelog, re.M).group(1)
    assert newest == clockwork.__version__ == importlib.metadata.version("clockwork-vae")


def test_wheel_holds_the_package_data_imports_and_builds_without_deprecations(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(ROOT)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    assert "deprecat" not in (built.stdout + built.stderr).lower()
    (wheel,) = tmp_path.glob("clockwork_vae-*.whl")
    assert wheel.name.startswith(f"clockwork_vae-{clockwork.__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    for data in ("clockwork/py.typed", "clockwork/data/mnist_digits.npz", "clockwork/data/folders.py"):
        assert data in names
    target = tmp_path / "installed"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True)
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import clockwork, clockwork.data as d; "
             "assert clockwork.__file__.startswith(sys.argv[1]), clockwork.__file__; "
             "print(clockwork.__version__, d.mnist_digits('train')[0].shape)")
    out = subprocess.run([sys.executable, "-c", probe, str(target)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[0] == clockwork.__version__
