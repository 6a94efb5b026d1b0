"""The wheel carries the twistd plugin, and a fresh install runs ``twistd relaybal``."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import venv
import zipfile

ROOT = pathlib.Path(__file__).parent.parent


def test_wheel_installs_and_twistd_finds_the_plugin(tmp_path: pathlib.Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dist),
            str(ROOT),
        ],
        check=True,
    )
    [wheel] = dist.glob("relaybal-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/relaybal_plugin.py" in names
    # The plugin directory must stay a namespace: an __init__.py would hide Twisted's own plugins.
    assert "twisted/__init__.py" not in names and "twisted/plugins/__init__.py" not in names
    assert "relaybal/py.typed" in names

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    pip = env_dir / "bin" / "pip"
    subprocess.run([str(pip), "install", "-q", str(wheel)], check=True)
    out = subprocess.run(
        [str(env_dir / "bin" / "twistd"), "--help"], capture_output=True, text=True, check=True, cwd=tmp_path
    ).stdout
    assert "relaybal" in out
    out = subprocess.run(
        [str(env_dir / "bin" / "twistd"), "relaybal", "--help"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    ).stdout  # fmt: skip
    assert "--config=" in out and "--log-format=" in out
    example = ROOT / "etc" / "splice.toml"
    done = subprocess.run(
        [str(env_dir / "bin" / "relaybal"), "check-config", str(example)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
