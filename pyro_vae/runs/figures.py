"""Figures: reconstructions, prior samples, latent space, ELBO curves, and the
comparison's ellipses, forest plot and learning curves.

Image grids go through ``torchvision.utils.make_grid`` / ``save_image``;
plots use matplotlib's object API (pyplot only where ArviZ draws
through it). Every file is written atomically.
"""

import math

import arviz as az
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse

from pyro_vae.plumbing.files import atomic_path


# Small images (the 8x8 digits) are enlarged to at least this many pixels a
# side, nearest-neighbour, so that a grid of them is readable.
MIN_IMAGE_SIDE = 28


def _as_images(rows, image_shape):
    images = rows.detach().float().cpu().clamp(0, 1).reshape(len(rows), 1, *image_shape)
    factor = -(-MIN_IMAGE_SIDE // min(image_shape))
    return images.repeat_interleave(factor, 2).repeat_interleave(factor, 3) if factor > 1 else images


def save_image_grid(path, rows, image_shape, nrow=8):
    """Flattened images in [0, 1] as one PNG grid, ``nrow`` per row."""
    from torchvision.utils import make_grid, save_image  # here: importing torchvision costs a second or more

    grid = make_grid(_as_images(rows, image_shape), nrow=nrow, padding=1, pad_value=0.5)
    with atomic_path(path) as tmp:
        save_image(grid, tmp, format="png")


def save_reconstructions(path, x, reconstruction, image_shape, per_row=8):
    """Alternating rows: data, then its reconstruction, ``per_row`` at a time."""
    pairs = []
    for start in range(0, len(x), per_row):
        pairs += [x[start:start + per_row], reconstruction[start:start + per_row]]
    save_image_grid(path, torch.cat(pairs), image_shape, nrow=per_row)


def _save_figure(path, fig):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def save_latent_scatter(path, z, labels=None, title="test set, posterior means", names=("z[0]", "z[1]")):
    """A scatter of latent codes (N, D), its axes named after the columns (``names``); codes of more
    than two dimensions are projected on their first two principal components."""
    z = z.detach().cpu().numpy()
    xlabel, ylabel = (*names, "")[:2]
    if z.shape[1] > 2:
        from sklearn.decomposition import PCA

        z = PCA(n_components=2).fit_transform(z)
        xlabel, ylabel = "principal component 1", "principal component 2"
    elif z.shape[1] == 1:
        z = torch.cat([torch.as_tensor(z), torch.zeros(len(z), 1)], 1).numpy()
        ylabel = ""
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    if labels is None:
        ax.scatter(z[:, 0], z[:, 1], s=4, alpha=0.6)
    else:
        points = ax.scatter(z[:, 0], z[:, 1], s=4, alpha=0.8, c=labels.cpu().numpy(), cmap="tab10")
        fig.colorbar(points, ax=ax, label="label")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    _save_figure(path, fig)


def save_elbo_curves(path, metrics):
    """Train and test ELBO (nats per example) against epoch."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    epochs = [m["epoch"] for m in metrics]
    ax.plot(epochs, [m["train_elbo"] for m in metrics], label="train")
    tested = [m for m in metrics if m["test_elbo"] is not None]
    ax.plot([m["epoch"] for m in tested], [m["test_elbo"] for m in tested], "o-" if len(tested) < len(metrics) else "-",
            label="test")
    ax.set(xlabel="epoch", ylabel="ELBO (nats per example)", title="ELBO")
    ax.legend()
    ax.grid(alpha=0.3)
    _save_figure(path, fig)


def save_ellipses(path, gaussians, draws, count, names=("z[0]", "z[1]")):
    """NUTS draws of the first ``count`` points with the 2-sigma ellipses of
    Gaussians ``{name: (means (N, 2), covariances (N, 2, 2))}``; ``names``: the two coordinates'."""
    fig = Figure(figsize=(3.2 * count, 3.4))
    flat = draws.reshape(-1, *draws.shape[2:]).cpu().numpy()
    colors = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    for i in range(count):
        ax = fig.add_subplot(1, count, i + 1)
        ax.scatter(flat[:, i, 0], flat[:, i, 1], s=2, alpha=0.15, color="k", label="NUTS draws")
        for (name, (means, covariances)), color in zip(gaussians.items(), colors):
            values, vectors = np.linalg.eigh(covariances[i])
            angle = math.degrees(math.atan2(vectors[1, -1], vectors[0, -1]))
            ax.add_patch(Ellipse(means[i], 4 * math.sqrt(values[-1]), 4 * math.sqrt(values[0]), angle=angle,
                                 fill=False, color=color, lw=2, label=f"{name} 2σ"))
        ax.set(title=f"point {i}", xlabel=names[0], ylabel=names[1] if i == 0 else "")
        if i == 0:
            ax.legend(fontsize=7, loc="best")
    _save_figure(path, fig)


def save_forest(path, idatas, points=5):
    """ArviZ forest plot of z for the first few points, one colour per method."""
    names = list(idatas)
    data = [idatas[n].sel(point=slice(0, points - 1)) for n in names]
    axes = az.plot_forest(data, model_names=names, var_names=["z"], combined=True, hdi_prob=0.94,
                          figsize=(7, 1.2 * points * idatas[names[0]].posterior.sizes["latent"] / 2 + 2))
    figure = np.ravel(axes)[0].figure
    _save_figure(path, figure)
    import matplotlib.pyplot as plt  # only here: importing pyplot picks a backend

    plt.close(figure)  # ArviZ draws through pyplot, which keeps every figure until closed


def save_curves(path, curves, title):
    """Held-out log p(x) against training wall time, one line per method
    (``curves``: name -> [{"seconds", "log_likelihood"}, ...])."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for name, curve in curves.items():
        ax.plot([c["seconds"] for c in curve], [c["log_likelihood"] for c in curve], "o-", label=name)
    ax.set(xscale="log", xlabel="training wall time (s)", ylabel="held-out log p(x) (nats per point)", title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    _save_figure(path, fig)
