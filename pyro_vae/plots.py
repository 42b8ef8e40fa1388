"""The figures of a run: reconstructions, prior samples, latent space, ELBO curves.

Image grids go through ``torchvision.utils.make_grid`` / ``save_image``;
plots use matplotlib's object API (no pyplot, so no global backend is
touched). Every file is written atomically.
"""

import torch
from matplotlib.figure import Figure
from torchvision.utils import make_grid, save_image

from pyro_vae.checkpoint import atomic_path


# Small images (the 8x8 digits) are enlarged to at least this many pixels a
# side, nearest-neighbour, so that a grid of them is readable.
MIN_IMAGE_SIDE = 28


def _as_images(rows, image_shape):
    images = rows.detach().float().cpu().clamp(0, 1).reshape(len(rows), 1, *image_shape)
    factor = -(-MIN_IMAGE_SIDE // min(image_shape))
    return images.repeat_interleave(factor, 2).repeat_interleave(factor, 3) if factor > 1 else images


def save_image_grid(path, rows, image_shape, nrow=8):
    """Flattened images in [0, 1] as one PNG grid, ``nrow`` per row."""
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


def save_latent_scatter(path, z, labels=None, title="test set, posterior means"):
    """A scatter of latent codes; codes of more than two dimensions are
    projected on their first two principal components."""
    z = z.detach().cpu().numpy()
    xlabel, ylabel = "z[0]", "z[1]"
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
