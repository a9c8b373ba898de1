"""Install the project's Snakemake profiles where Snakemake looks for them by name, so that the command
users type, `snakemake --profile slurm`, works from the repository root.

Snakemake finds a profile NAME in $XDG_CONFIG_HOME/snakemake/NAME (default ~/.config/snakemake/NAME) or
/etc/xdg/snakemake/NAME, or as a path. Each folder under profiles/ is linked there by name. Idempotent: a
link that already points here is left alone; anything else of the same name is refused, never replaced.

    python tools/install_profiles.py [--dest DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

PROFILES = Path(__file__).resolve().parents[1] / "profiles"


def snakemake_config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "snakemake"


def install(dest: Path, profiles: Path = PROFILES) -> list[str]:
    """Link every profile folder into dest; returns one line per profile saying what happened."""
    dest.mkdir(parents=True, exist_ok=True)
    report = []
    for profile in sorted(p for p in profiles.iterdir() if (p / "config.yaml").is_file()):
        link = dest / profile.name
        if link.is_symlink() and link.resolve() == profile.resolve():
            report.append(f"{link} -> {profile} (already installed)")
            continue
        if link.exists() or link.is_symlink():
            raise SystemExit(f"install_profiles: {link} exists and is not this project's {profile.name} "
                             f"profile; move it away or run with --profile {profile} instead")
        link.symlink_to(profile.resolve(), target_is_directory=True)
        report.append(f"{link} -> {profile}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=None, help="default: $XDG_CONFIG_HOME/snakemake")
    args = parser.parse_args()
    for line in install(args.dest or snakemake_config_dir()):
        print(line)


if __name__ == "__main__":
    sys.exit(main())
