"""What simulation-based calibration reads off the ranks: the statistics, the table and the figure.

For simulations i = 1..N, the truth u_i ~ p(u) (one coordinate of the flat unconstrained latents,
``density.Layout``) and L draws u_i^(1..L) of the inferred posterior for the x_i simulated from it,
the rank r_i = #{l : u_i^(l) < u_i} is uniform on {0, ..., L} for every N exactly when the
inference is calibrated (Talts et al. 2018, theorem 1: the truth is then one more draw of the same
posterior, exchangeable with the L others). Read off the ranks, per coordinate:

- uniformity: Pearson's chi-square of the ranks counted in B equal bins of (L + 1) / B values each,
  chi-square with B - 1 degrees of freedom under calibration; the coordinates of one simulation are
  dependent, so the method's p-value is the Bonferroni bound min(1, D min_d p_d), valid under any
  dependence. Beside it, whether the ECDF of the fractional ranks (r + 1) / (L + 1) stays inside the
  simultaneous band of level 1 - 0.05 / D (Säilynoja, Bürkner & Vehtari 2022, ArviZ's
  ``ecdf_confidence_band``), evaluated at the bin edges k / B, so the figure shows that very test;
- coverage of the central credible interval of level a: the truth lies inside it when its rank is
  one of the k = round(a (L + 1)) central values, probability k / (L + 1) (= a for the default L)
  under calibration; averaged over coordinates, whose binomial standard error sqrt(a (1 - a) / N)
  bounds that of the average (an average of dependent indicators varies no more than one of them);
- z-score (Schad, Betancourt & Vasishth 2021) z = (E[u | x] - u) / sd[u | x], both moments from the
  L draws: its mean says whether the posterior sits to one side of the truth, its root mean square,
  divided by the sqrt((1 + 1/L)(L - 1)/(L - 3)) that a calibrated Gaussian posterior with L
  independent draws gives (z / sqrt(1 + 1/L) is then Student's t with L - 1 degrees of freedom), is
  1 when calibrated, above 1 for an over-confident (too narrow) posterior, below 1 for an
  under-confident one;
- contraction 1 - E[var(u | x)] / var(u), the prior variance estimated by the N truths' variance.
"""

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy import stats

LEVELS = (0.5, 0.8, 0.9, 0.95)  # central credible intervals whose coverage is reported
MAX_BINS = 20
MIN_PER_BIN = 5  # expected ranks per bin: the chi-square approximation holds from about here on
ALPHA = 0.05  # level of the ECDF band test, over all coordinates of a method


@dataclass
class CalibrationResult:
    """One method's SBC: the ranks (N simulations x D coordinates, values 0..L) and what they say."""

    method: str
    simulations: int
    draws: int
    coordinates: list
    ranks: np.ndarray
    bins: int
    chi_square: list
    p_values: list
    p_value: float  # Bonferroni over coordinates
    ecdf_inside: list  # per coordinate: the ECDF within the simultaneous band of level 1 - ALPHA / D
    coverage: dict  # level -> observed coverage, averaged over coordinates
    coverage_expected: dict  # level -> k / (L + 1), the coverage of a calibrated posterior
    coverage_per_coordinate: dict
    mean_z: float
    rms_z: float  # 1 calibrated, > 1 over-confident, < 1 under-confident
    contraction: float
    seconds: float
    notes: list = field(default_factory=list)

    @property
    def coverage_se(self):
        """Binomial standard error of each level's coverage (a bound for the coordinates' average)."""
        return {a: math.sqrt(e * (1 - e) / self.simulations) for a, e in self.coverage_expected.items()}

    def as_dict(self):
        """Everything but the ranks, for JSON."""
        out = asdict(self)
        out.pop("ranks")
        out["coverage_se"] = self.coverage_se
        return out


def ranks_of(truth, draws):
    """r[i, d] = #{l : draws[l, i, d] < truth[i, d]}: integers 0..L, for ``truth`` (N, D) and ``draws``
    (L, N, D). A draw equal to the truth counts as below it half the time (a fair tie-break, as
    Talts et al. do for discrete parameters; continuous draws never tie)."""
    below = (draws < truth).sum(0)
    ties = (draws == truth).sum(0)
    if bool(ties.any()):
        below = below + torch.binomial(ties.double(), torch.full_like(ties, 0.5, dtype=torch.double)).long()
    return below.cpu().numpy().astype(np.int64)


def bins_for(draws, simulations):
    """The most bins B <= MAX_BINS that divide the L + 1 rank values into equal parts and still expect
    MIN_PER_BIN ranks each; 0 when even two bins expect fewer."""
    fitting = [b for b in range(2, MAX_BINS + 1) if (draws + 1) % b == 0 and simulations >= MIN_PER_BIN * b]
    return max(fitting, default=0)


def bin_edges(bins):
    """The ECDF's evaluation points k / B, k = 1..B-1, inside (0, 1)."""
    return np.arange(1, bins) / bins


def fractional_ranks(ranks, draws):
    """(r + 1) / (L + 1): P((r + 1) / (L + 1) <= k / B) = k / B exactly when r is uniform on 0..L
    and B divides L + 1, so the uniform CDF is the reference at the bin edges."""
    return (ranks + 1) / (draws + 1)


def ecdf_band(simulations, bins, coordinates):
    """The simultaneous band (lower, upper) of the ECDF at the bin edges, level 1 - ALPHA / D."""
    from arviz.stats.ecdf_utils import ecdf_confidence_band

    edges = bin_edges(bins)
    return ecdf_confidence_band(simulations, edges, edges, prob=1 - ALPHA / coordinates, method="optimized")


def uniformity(ranks, draws, bins):
    """(chi-square per coordinate, its p-value, Bonferroni p-value, ECDF inside its band per coordinate)."""
    simulations, coordinates = ranks.shape
    counts = np.stack([np.bincount(ranks[:, d] * bins // (draws + 1), minlength=bins) for d in range(coordinates)], 1)
    chi2, p = stats.chisquare(counts, axis=0)
    lower, upper = ecdf_band(simulations, bins, coordinates)
    edges = bin_edges(bins)
    values = fractional_ranks(ranks, draws)
    inside = [bool(np.all((lower <= e) & (e <= upper))) for e in
              ((values[:, d, None] <= edges).mean(0) for d in range(coordinates))]
    return [float(c) for c in chi2], [float(q) for q in p], float(min(1.0, coordinates * p.min())), inside


def coverage(ranks, draws):
    """(observed, expected, per coordinate) coverage of the central intervals of LEVELS."""
    observed, expected, per_coordinate = {}, {}, {}
    for level in LEVELS:
        k = round(level * (draws + 1))
        low = (draws + 1 - k) // 2
        inside = ((ranks >= low) & (ranks < low + k)).mean(0)
        observed[level], expected[level], per_coordinate[level] = float(inside.mean()), k / (draws + 1), inside.tolist()
    return observed, expected, per_coordinate


def z_scores(truth, draws):
    """(mean z, rms z over the calibrated Gaussian's, contraction), averaged over simulations and coordinates."""
    n = draws.shape[0]
    mean, var = draws.mean(0), draws.var(0, correction=1)
    z = (mean - truth) / var.sqrt()
    calibrated = (1 + 1 / n) * (n - 1) / (n - 3)
    rms = math.sqrt(float(z.pow(2).mean()) / calibrated)
    contraction = float((1 - var.mean(0) / truth.var(0, correction=1)).mean())
    return float(z.mean()), rms, contraction


def summarize(method, truth, draws, coordinates, seconds, notes=()):
    """The :class:`CalibrationResult` of a method's ``draws`` (L, N, D) for the ``truth`` (N, D)."""
    truth, draws = truth.detach().double().cpu(), draws.detach().double().cpu()
    n_draws, simulations = draws.shape[0], truth.shape[0]
    ranks = ranks_of(truth, draws)
    bins = bins_for(n_draws, simulations)
    chi2, p_values, p_value, inside = uniformity(ranks, n_draws, bins)
    observed, expected, per_coordinate = coverage(ranks, n_draws)
    mean_z, rms_z, contraction = z_scores(truth, draws)
    return CalibrationResult(method, simulations, n_draws, list(coordinates), ranks, bins, chi2, p_values, p_value,
                             inside, observed, expected, per_coordinate, mean_z, rms_z, contraction, seconds,
                             list(notes))


def format_calibration(results, title="Simulation-based calibration"):
    """The results as a markdown table: one row per method."""
    first = results[0]
    lines = [f"# {title}", "",
             f"{first.simulations} simulations (z, x) ~ p(z) p(x | z) from the model's program, {first.draws} posterior "
             f"draws each, ranks of {len(first.coordinates)} coordinates in the unconstrained space. p: chi-square over "
             f"{first.bins} rank bins, Bonferroni over coordinates; ECDF: inside the simultaneous "
             f"{100 * (1 - ALPHA):.0f}% band (Säilynoja et al. 2022) for every coordinate; coverage of central "
             f"intervals, binomial s.e. {first.coverage_se[LEVELS[-1]]:.3f} at {LEVELS[-1]:.0%}; rms z: 1 calibrated, "
             f"> 1 over-confident, < 1 under-confident.", "",
             "| method | p | ECDF | " + " | ".join(f"cover {a:.0%}" for a in LEVELS)
             + " | mean z | rms z | contraction | seconds |",
             "|---|---|---|" + "---|" * len(LEVELS) + "---|---|---|---|"]
    for r in results:
        cover = " | ".join(f"{r.coverage[a]:.3f}" for a in LEVELS)
        ecdf = "inside" if all(r.ecdf_inside) else "outside"
        lines.append(f"| {r.method} | {r.p_value:.3g} | {ecdf} | {cover} | {r.mean_z:+.3f} | {r.rms_z:.3f} | "
                     f"{r.contraction:.3f} | {r.seconds:.2f} |")
    notes = [f"- {r.method}: {note}" for r in results for note in r.notes]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def save_calibration_figure(path, results, max_coordinates=4):
    """ECDF-difference plots of the fractional ranks with their simultaneous bands (``az.plot_ecdf``):
    one row per method, one column per coordinate (the first ``max_coordinates``)."""
    import arviz as az
    from matplotlib.figure import Figure

    from pyro_vae.plumbing.files import atomic_path

    columns = min(max_coordinates, len(results[0].coordinates))
    fig = Figure(figsize=(3.2 * columns, 2.4 * len(results)), layout="constrained")
    axes = np.asarray(fig.subplots(len(results), columns, squeeze=False, sharey=True))
    for i, (row, r) in enumerate(zip(axes, results)):
        edges = bin_edges(r.bins)
        values = fractional_ranks(r.ranks, r.draws)
        for d, ax in enumerate(row):
            az.plot_ecdf(values[:, d], eval_points=edges, cdf=stats.uniform(0, 1).cdf, difference=True,
                         confidence_bands="optimized", ci_prob=1 - ALPHA / len(r.coordinates), ax=ax)
            ax.set_title(f"{r.method}: {r.coordinates[d]}", fontsize=9)
            ax.set_xlabel("fractional rank (r + 1) / (L + 1)" if i == len(results) - 1 else "")
        row[0].set_ylabel("ECDF - uniform")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
