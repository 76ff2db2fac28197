"""The `genlab` command line: fit a model, draw samples, evaluate it, plot it, compare families.

    genlab fit gmm --data moons --components 8 --out runs/moons-gmm
    genlab fit vae --data digits --latent-dim 16 --max-time 60 --out runs/digits-vae
    genlab sample runs/moons-gmm -n 1000 --out samples.npy
    genlab eval runs/moons-gmm --data moons --json
    genlab plot runs/moons-gmm --data moons
    genlab edit runs/digits-flow --input digit.png --mask mask.png --out inpainted.png

The commands parse arguments, call `genlab.data`, `genlab.models`, `genlab.evaluation`,
`genlab.compare` and `genlab.plots`, and print; the maths lives in those modules. Each
`genlab fit <family>` is generated from the family's config (`fit.py`), so it needs no edit
here when a family is added or an option changes. `common.py` holds the shared options, the
printing, and `run`, which turns bad input into one line `genlab: error: ...`.
"""

from genlab.cli import compare, edit, evaluate, fit, plot, sample  # noqa: F401  (register commands)
from genlab.cli.common import app, main, run

__all__ = ["app", "main", "run"]
