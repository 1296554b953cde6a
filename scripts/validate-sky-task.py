#!/usr/bin/env python3
"""Validate SkyPilot task files with SkyPilot's own parser: sky.Task.from_yaml, then validate().

    python scripts/validate-sky-task.py [--offline] TASK.yaml...

Prints one JSON object per task (name, resources, secret names, run) so a caller can check the
fields that matter; exits 1 on the first task SkyPilot refuses, with its message.

--offline: SkyPilot canonicalises accelerator names against a catalog it downloads from GitHub.
Without network, this runs SkyPilot in a private HOME whose catalog lists just the accelerator
names the tasks use, so everything else (the schema, resources, secrets, file mounts, run) is
still checked by SkyPilot itself. Accelerator names are then not checked against real clouds.
"""
import json
import os
import sys
import tempfile


def accelerator_names(paths):
    import yaml

    names = set()
    for path in paths:
        with open(path) as f:
            task = yaml.safe_load(f) or {}
        acc = (task.get("resources") or {}).get("accelerators")
        if isinstance(acc, str):
            names.add(acc.split(":")[0])
    return names


def main(argv):
    offline = "--offline" in argv
    paths = [a for a in argv if a != "--offline"]
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    if offline:
        home = tempfile.mkdtemp(prefix="sky-home-")
        os.environ["HOME"] = home
        names = accelerator_names(paths)
        from sky.catalog import constants

        catalog = os.path.join(home, ".sky", "catalogs", constants.CATALOG_SCHEMA_VERSION, "common")
        os.makedirs(catalog, exist_ok=True)
        with open(os.path.join(catalog, "accelerators.csv"), "w") as f:
            f.write("AcceleratorName,Clouds\n")
            for name in sorted(names):
                f.write(f'{name},"AWS, GCP, Azure, Kubernetes"\n')
    import sky

    for path in paths:
        try:
            task = sky.Task.from_yaml(path)
            task.validate()
        except Exception as e:  # SkyPilot's own message is the point of this script.
            print(f"{path}: SkyPilot refuses it: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        resources = [
            {
                "accelerators": r.accelerators,
                "cloud": str(r.cloud) if r.cloud else None,
                "use_spot": r.use_spot,
                "disk_size": r.disk_size,
                "ports": r.ports,
                "autostop": str(r.autostop_config) if getattr(r, "autostop_config", None) else None,
            }
            for r in task.resources
        ]
        print(
            json.dumps(
                {
                    "path": path,
                    "name": task.name,
                    "resources": resources,
                    # Null-valued secrets are references SkyPilot resolves at launch from
                    # `--secret NAME`; inline ones would carry a value in the file.
                    "secrets_from_launch": sorted(
                        ref.name for ref in getattr(task, "_managed_secret_refs", [])
                    ),
                    "secrets_inline": sorted(task.secrets.keys()),
                    "envs": sorted(task.envs.keys()),
                    "file_mounts": sorted((task.file_mounts or {}).keys()),
                    "run": task.run,
                }
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
