"""What every synthetic task shares: the dataset generators, the held-out prompt split and the
annotation model (reading token ids inside a jitted gold reward: ``irl_jax.tasks.tokens``).

A task supplies four samplers (prompts, demonstrator responses, base responses) and its gold
reward r*(x, y); this module turns them into ``datasets.Dataset`` s in the standard column
formats. Everything is deterministic by ``seed``: each generator draws from its own numpy stream
``default_rng([seed, stream])``, so e.g. ``demonstrations(n, seed)["prompt"] == prompts(n,
seed)``.

**Candidate responses** (compared in preferences, rankings and unpaired labels) come from a
mixture: with probability ``expert_fraction`` (default 0.25) a demonstrator response, otherwise a
*base response* — the task's documented, diverse "initial policy" distribution, the same one the
base corpus is made of — so that reward models see a wide spread of gold values.

**Held-out prompts.** Every prompt belongs to one split, ``train`` or ``eval``, by a hash of its
text (``split_of``: 1 in ``EVAL_BUCKETS`` prompts is an evaluation prompt), and every generator
takes ``split`` (default ``train``): prompts are drawn from the task's distribution restricted to
that split, so evaluation prompts never occur in training data.

**Annotation model** (SURVEY §3): P(y₁ ≻ y₂) = σ(β_ann · (r*(x₁, y₁) − r*(x₂, y₂))), with
β_ann = ∞ meaning noiseless labels. A label *flips* when the chosen response has the lower gold
reward (a gold tie counts as half a flip), so the expected flip rate is E[σ(−β_ann |Δr*|)].
K-way rankings follow the Plackett–Luce model with scores β_ann · r*, sampled exactly by sorting
β_ann · r* + Gumbel noise. Unpaired (KTO) labels are desirable with probability
σ(β_ann · (r* − τ)), τ = the task's ``label_threshold``.
"""

from __future__ import annotations

import abc
import math
import zlib

import datasets
import jax
import numpy as np

_STREAMS = {"prompts": 0, "demos": 1, "base": 2, "candidates": 3, "labels": 4, "prompts2": 5}
DEFAULT_EXPERT_FRACTION = 0.25
SPLITS = ("train", "eval")
EVAL_BUCKETS = 8  # 1 prompt in 8 is held out for evaluation


def stream(seed: int, name: str) -> np.random.Generator:
    """The numpy generator of one named stream of ``seed``."""
    return np.random.default_rng([seed, _STREAMS[name]])


def split_of(prompt: str) -> str:
    """``"eval"`` for 1 in ``EVAL_BUCKETS`` prompts (by a CRC-32 of the text), else ``"train"``."""
    return "eval" if zlib.crc32(prompt.encode()) % EVAL_BUCKETS == 0 else "train"


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))


def preference_probability(delta: np.ndarray, beta_ann: float) -> np.ndarray:
    """P(y₁ ≻ y₂) = σ(β_ann · Δ), Δ = r*(y₁) − r*(y₂); β_ann = ∞ gives 1[Δ > 0] + ½ 1[Δ = 0]."""
    delta = np.asarray(delta, np.float64)
    if math.isinf(beta_ann):
        return (delta > 0) + 0.5 * (delta == 0)
    return sigmoid(beta_ann * delta)


def safe_log(p: float) -> float:
    """log p, with log 0 = −∞."""
    return math.log(p) if p > 0 else -math.inf


def log_binary_entropy(p: float) -> float:
    """h(p) = −p log p − (1−p) log(1−p) in nats."""
    return -sum(q * math.log(q) for q in (p, 1.0 - p) if q > 0)


# ----------------------------------------------------------------------------- the task base


class Task(abc.ABC):
    """A synthetic task: samplers and a gold reward (abstract), dataset generators (shared).

    Subclasses are frozen dataclasses with a ``name`` and a ``label_threshold`` (τ for unpaired
    labels) and implement the abstract methods below.
    """

    name: str
    label_threshold: float

    @abc.abstractmethod
    def sample_prompts(self, n: int, rng: np.random.Generator) -> list[str]:
        """``n`` prompts drawn with ``rng``."""

    @abc.abstractmethod
    def sample_demonstrations(self, prompts: list[str], rng: np.random.Generator) -> list[str]:
        """One demonstrator response per prompt."""

    @abc.abstractmethod
    def sample_base_responses(self, prompts: list[str], rng: np.random.Generator) -> list[str]:
        """One base-distribution ("initial policy") response per prompt."""

    @abc.abstractmethod
    def demonstrator_logprob(self, prompt: str, response: str) -> float:
        """log π_demo(response, eos | prompt): the response's tokens plus the final eos."""

    def demonstrator_token_logprobs(self, prompt: str, response_ids: list[int]) -> list[float]:
        """Per-token log π_demo(y_t | x, y_<t) of a response given as token ids (its eos, if
        any, included; nothing after it). The first token the demonstrator cannot emit gets
        −inf and every later one NaN (the demonstrator is undefined off its support). Their sum
        is ``demonstrator_logprob`` for a response that ends with eos. Tasks that do not
        provide it raise ``NotImplementedError``."""
        raise NotImplementedError(f"{self.name} has no per-token demonstrator log-probabilities")

    @abc.abstractmethod
    def demonstrator_entropy(self) -> float:
        """Token-weighted demonstrator entropy (nats per response token, eos included):
        E_x[H(π_demo(·|x))] / E_x[E_y |y|+1], the limit of a token-averaged SFT eval NLL."""

    @abc.abstractmethod
    def gold_reward(
        self,
        prompt_ids: jax.Array,
        prompt_mask: jax.Array,
        response_ids: jax.Array,
        response_mask: jax.Array,
    ) -> jax.Array:
        """r*(x, y) ``[B]`` float32, jittable (pure jnp, static shapes).

        Args:
          prompt_ids, prompt_mask: ``[B, P]`` left-padded prompts.
          response_ids, response_mask: ``[B, N]`` right-padded responses; the mask covers the
            response tokens including a final eos when present. Pad/bos/eos, anything after the
            first eos, and the style token carry no content; a response without eos
            (truncated) is scored on its content like any other. Ids outside the vocabulary
            read as ``<unk>``.

        Returns:
          ``[B]`` float32 gold rewards.
        """

    @abc.abstractmethod
    def gold_reward_text(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """r*(x, y) from text: the same values as ``gold_reward`` on the text's token ids.

        Args:
          prompts, responses: texts (a literal ``<eos>`` ends a response's content).

        Returns:
          ``[B]`` float32 gold rewards.
        """

    # ------------------------------------------------------------------- generators

    def prompts(self, n: int, seed: int, split: str = "train") -> list[str]:
        """``n`` prompts of ``split``, deterministic by ``seed``."""
        return self.draw_prompts(n, stream(seed, "prompts"), split)

    def draw_prompts(self, n: int, rng: np.random.Generator, split: str = "train") -> list[str]:
        """``n`` prompts of ``split`` drawn with ``rng``: the task's prompt distribution
        restricted to the split (draws of the other split are rejected)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        out: list[str] = []
        while len(out) < n:
            wanted = n - len(out)
            batch = self.sample_prompts(wanted * (EVAL_BUCKETS if split == "eval" else 2), rng)
            out.extend(p for p in batch if split_of(p) == split)
        return out[:n]

    def base_corpus(self, n: int, seed: int, split: str = "train") -> datasets.Dataset:
        """Generic text of the task's language for the initial (pre-SFT) policy: column ``text``
        = prompt + " " + base response (no special tokens)."""
        prompts = self.prompts(n, seed, split)
        responses = self.sample_base_responses(prompts, stream(seed, "base"))
        return datasets.Dataset.from_dict(
            {"text": [f"{p} {r}" for p, r in zip(prompts, responses)]}
        )

    def demonstrations(self, n: int, seed: int, split: str = "train") -> datasets.Dataset:
        """Demonstrator responses: columns ``prompt``, ``completion`` (no eos in the text)."""
        prompts = self.prompts(n, seed, split)
        completions = self.sample_demonstrations(prompts, stream(seed, "demos"))
        return datasets.Dataset.from_dict({"prompt": prompts, "completion": completions})

    def candidates(
        self, prompts: list[str], rng: np.random.Generator, expert_fraction: float
    ) -> list[str]:
        """One candidate per prompt: a demonstration with probability ``expert_fraction``, else
        a base response."""
        expert = self.sample_demonstrations(prompts, rng)
        base = self.sample_base_responses(prompts, rng)
        use_expert = rng.random(len(prompts)) < expert_fraction
        return [e if u else b for e, b, u in zip(expert, base, use_expert)]

    def preferences(
        self,
        n: int,
        seed: int,
        beta_ann: float = 5.0,
        pairing: str = "same_prompt",
        expert_fraction: float = DEFAULT_EXPERT_FRACTION,
        split: str = "train",
    ) -> tuple[datasets.Dataset, dict[str, float]]:
        """``n`` preference pairs labelled by P(y₁ ≻ y₂) = σ(β_ann (r*(y₁) − r*(y₂))).

        Args:
          n: number of pairs.
          seed: seed.
          beta_ann: annotator rationality (``math.inf`` = noiseless).
          pairing: ``"same_prompt"`` (columns ``prompt``, ``chosen``, ``rejected``) or
            ``"cross_prompt"`` (``chosen_prompt``, ``chosen``, ``rejected_prompt``,
            ``rejected``); both add ``chosen_score``, ``rejected_score`` (gold rewards).
          expert_fraction: share of candidates drawn from the demonstrator.
          split: the prompts' split.

        Returns:
          ``(dataset, stats)``; stats: ``flip_rate`` (empirical, ties count ½),
          ``expected_flip_rate`` = mean σ(−β_ann |Δr*|) over the drawn pairs,
          ``flip_rate_stderr`` its sampling standard error, ``tie_rate``, ``beta_ann``, ``n``.
        """
        if pairing not in ("same_prompt", "cross_prompt"):
            raise ValueError(f"pairing must be 'same_prompt' or 'cross_prompt', got {pairing!r}")
        first_prompts = self.prompts(n, seed, split)
        if pairing == "same_prompt":
            second_prompts = first_prompts
        else:
            second_prompts = self.draw_prompts(n, stream(seed, "prompts2"), split)
        rng = stream(seed, "candidates")
        first = self.candidates(first_prompts, rng, expert_fraction)
        second = self.candidates(second_prompts, rng, expert_fraction)
        r1 = self.gold_reward_text(first_prompts, first).astype(np.float64)
        r2 = self.gold_reward_text(second_prompts, second).astype(np.float64)
        p_first = preference_probability(r1 - r2, beta_ann)
        first_wins = stream(seed, "labels").random(n) < p_first

        pick = lambda a, b: [x if w else y for x, y, w in zip(a, b, first_wins)]
        chosen_score, rejected_score = np.where(first_wins, r1, r2), np.where(first_wins, r2, r1)
        columns = {
            "chosen": pick(first, second),
            "rejected": pick(second, first),
            "chosen_score": chosen_score.tolist(),
            "rejected_score": rejected_score.tolist(),
        }
        if pairing == "same_prompt":
            columns = {"prompt": first_prompts, **columns}
        else:
            columns = {
                "chosen_prompt": pick(first_prompts, second_prompts),
                "rejected_prompt": pick(second_prompts, first_prompts),
                **columns,
            }
        return datasets.Dataset.from_dict(columns), flip_statistics(
            chosen_score, rejected_score, beta_ann
        )

    def rankings(
        self,
        n: int,
        seed: int,
        k: int = 4,
        beta_ann: float = 5.0,
        expert_fraction: float = DEFAULT_EXPERT_FRACTION,
        split: str = "train",
    ) -> datasets.Dataset:
        """``n`` K-way rankings of same-prompt candidates under Plackett–Luce with scores
        β_ann · r* (β_ann = ∞: sorted by gold, ties in random order).

        Returns:
          Columns ``prompt``, ``completions`` (K strings, most to least preferred) and
          ``scores`` (their gold rewards, same order).
        """
        prompts = self.prompts(n, seed, split)
        rng = stream(seed, "candidates")
        columns = [self.candidates(prompts, rng, expert_fraction) for _ in range(k)]
        scores = np.stack(
            [self.gold_reward_text(prompts, c).astype(np.float64) for c in columns], axis=1
        )
        noise = stream(seed, "labels").gumbel(size=(n, k))
        if math.isinf(beta_ann):
            order = np.lexsort((noise, -scores), axis=-1)  # by score, ties by noise
        else:
            order = np.argsort(-(beta_ann * scores + noise), axis=-1)
        completions = [[columns[j][i] for j in order[i]] for i in range(n)]
        ordered = np.take_along_axis(scores, order, axis=1)
        return datasets.Dataset.from_dict(
            {"prompt": prompts, "completions": completions, "scores": ordered.tolist()}
        )

    def unpaired(
        self,
        n: int,
        seed: int,
        beta_ann: float = 5.0,
        expert_fraction: float = DEFAULT_EXPERT_FRACTION,
        split: str = "train",
    ) -> datasets.Dataset:
        """``n`` unpaired (KTO) examples, desirable with probability σ(β_ann (r* − τ)),
        τ = ``label_threshold``.

        Returns:
          Columns ``prompt``, ``completion``, ``label`` (bool, True = desirable), ``score``.
        """
        prompts = self.prompts(n, seed, split)
        completions = self.candidates(prompts, stream(seed, "candidates"), expert_fraction)
        scores = self.gold_reward_text(prompts, completions).astype(np.float64)
        p = preference_probability(scores - self.label_threshold, beta_ann)
        labels = stream(seed, "labels").random(n) < p
        return datasets.Dataset.from_dict(
            {
                "prompt": prompts,
                "completion": completions,
                "label": labels.tolist(),
                "score": scores.tolist(),
            }
        )


def flip_statistics(
    chosen_score: np.ndarray, rejected_score: np.ndarray, beta_ann: float
) -> dict[str, float]:
    """Empirical vs expected label flip rate of labelled pairs.

    flip_i = 1[r*_chosen < r*_rejected] + ½ 1[tie]; its expectation given the pair is
    p_i = σ(−β_ann |Δ_i|), so the standard error of the mean is √(Σ_{non-ties} p_i(1−p_i)) / n.
    """
    chosen_score, rejected_score = np.asarray(chosen_score), np.asarray(rejected_score)
    n = len(chosen_score)
    tie = chosen_score == rejected_score
    flips = (chosen_score < rejected_score) + 0.5 * tie
    p = preference_probability(-np.abs(chosen_score - rejected_score), beta_ann)
    variance = np.sum(np.where(tie, 0.0, p * (1 - p)))
    return {
        "flip_rate": float(flips.mean()),
        "expected_flip_rate": float(p.mean()),
        "flip_rate_stderr": float(np.sqrt(variance) / n),
        "tie_rate": float(tie.mean()),
        "beta_ann": float(beta_ann),
        "n": float(n),
    }
