#!/usr/bin/env python
"""The cdktf app: one DaskClusterStack per cluster configured in cdktf.json."""

import os
import sys

from stacks.config import SettingsError, load_clusters


def main() -> int:
    try:
        clusters = load_clusters()
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # Imported only after the settings are known to be good: jsii takes ~20 s to load.
    # jsii warns in red on Node.js 20, which works and is what this project is tested with.
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    from cdktf import App

    from stacks.stack import DaskClusterStack

    app = App()
    for settings in clusters:
        DaskClusterStack(app, settings.name, settings=settings)
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main())
