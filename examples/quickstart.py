# %% [markdown]
# # The zoo from Python
# Train a model, load it back, sample from it, evaluate it and plot the samples, using only the
# public API of `zoo_core`. Run it as a script (`python examples/quickstart.py [OUT_DIR]`) or cell
# by cell in a notebook.

# %%
import sys
from pathlib import Path

import zoo_core

out = Path(sys.argv[1] if len(sys.argv) > 1 else "quickstart-output")
print(zoo_core.list_families())
print(zoo_core.list_entries("gmm-*"))

# %% An untrained model from a registry entry, with a model setting overridden
model = zoo_core.create_model("gmm-moons", n_components=8)
print(type(model).__name__, model.sample((3,)).shape)

# %% Train with the shared runner (the same as `zoo train gmm-moons --max-epochs 2`)
run = zoo_core.train("gmm-moons", max_epochs=2, runs_dir=str(out / "runs"))
print(run.dir, run.metrics["test"]["nll_nats"])

# %% Load the trained model (no pickle runs), sample and evaluate it
model = zoo_core.load(run.dir)
samples = model.sample((5,))
print(samples.shape)  # torch.Size([5, 2])
results = zoo_core.evaluate(model, metrics=["nll", "sample_quality"])
print({k: round(v, 4) for k, v in results["test"].items() if isinstance(v, float)})

# %% Plot samples against the data
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

many = model.sample((2000,)).numpy()
plt.scatter(many[:, 0], many[:, 1], s=1)
plt.title(f"gmm-moons samples (test NLL {results['test']['nll_nats']:.3f} nats)")
plt.savefig(out / "samples.png", dpi=80)
print("wrote", out / "samples.png")
