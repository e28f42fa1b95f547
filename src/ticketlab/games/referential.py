"""The referential game of Zhou et al. 2022 ("Fortuitous Forgetting in Connectionist Networks", the
compositional-language experiment), with its forgetting schedules and topographic similarity.

The game. An object is a colour and a shape (8 x 4 = 32 objects by default), shown to the agents as the
concatenation of a one-hot colour and a one-hot shape. Each game the sender sees a target object and
sends a message of `message_length` discrete symbols from a vocabulary of `vocab`; the receiver reads the
message and picks the target among `candidates` objects (the target and distinct random distractors, in
random order).

The agents (small, so a game runs on one CPU core; the shape of the paper's authors' agents, written anew):
- `Sender`: a linear map of the object gives the initial hidden state of an LSTM cell; at each position
  the cell reads the previous symbol (one-hot; zeros first) and a linear layer gives the symbol's logits.
- `Receiver`: an LSTM cell reads the message's one-hot symbols; a linear layer maps its last hidden state
  to a query; each candidate object is embedded by another linear layer; the candidates' logits are the
  dot products of query and embeddings.

Training (one `train_step`): the receiver minimises the cross-entropy of the target's position among
the candidates; the sender's symbols are sampled and it is trained by REINFORCE, its reward the
receiver's log-probability of the target (minus the cross-entropy, as in EGG), with a leave-one-out
batch-mean baseline and an entropy bonus (`game_entropy`). Each agent has its own Adam.

Arms (`ARMS`): `none`; `receiver-reset`: every `reset_every` iterations the receiver is re-initialised
(its own init, `reset_parameters`) and its Adam state cleared; `partial-forget` ("partial balanced
forgetting"): every `forget_every` iterations each agent keeps the `forget_keep` fraction of every
parameter tensor that was largest in magnitude at initialisation (the same mask every time) and redraws the
rest with its own init; both agents' Adam states are cleared. Interventions happen after the iteration
whose count is a multiple of the period, never after the last one.

Measures, every `game_eval_every` iterations (and at 0 and the end; before that iteration's intervention):
- topographic similarity: Spearman's rank correlation, over all pairs of the objects, between the Hamming
  distance of their attributes and the Hamming distance of their messages (the sender's greedy messages;
  with messages of one fixed length this is the usual "edit distance" measure with substitutions only);
- accuracy: greedy sender and argmax receiver on a fixed set of evaluation games (`EVAL_GAMES_PER_OBJECT`
  games per target object, drawn once per seed);
- train accuracy and sender entropy: means over the training games since the previous measure;
- distinct messages among the objects' greedy messages.

Determinism and resumption: every random draw comes from a seeded generator (`seeding`): the initial
agents, the training games, the sender's symbols, each redraw. `train_game` saves its state (agents,
optimizers, generators, step, rows so far) to a checkpoint every `game_checkpoint_every` iterations, so a
killed game resumes to the numbers it would have given uninterrupted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..seeding import derive_seed, generator
from ..train.checkpoint import optimizer_from_flat, optimizer_to_flat

ARMS = ("none", "receiver-reset", "partial-forget")
EVAL_GAMES_PER_OBJECT = 10


# --------------------------------------------------------------------------------------------- objects
def attributes(colours: int, shapes: int) -> torch.Tensor:
    """(N, 2) long: the colour and shape index of every object, N = colours x shapes (object o = colour o // shapes)."""
    o = torch.arange(colours * shapes)
    return torch.stack([o // shapes, o % shapes], 1)


def one_hot_objects(colours: int, shapes: int) -> torch.Tensor:
    """(N, colours + shapes) float: one-hot colour then one-hot shape of every object."""
    a = attributes(colours, shapes)
    return torch.cat([F.one_hot(a[:, 0], colours), F.one_hot(a[:, 1], shapes)], 1).float()


# ---------------------------------------------------------------------------------------------- agents
class Sender(nn.Module):
    def __init__(self, attribute_size: int, vocab: int, length: int, hidden: int):
        super().__init__()
        self.vocab, self.length = vocab, length
        self.encode = nn.Linear(attribute_size, hidden)
        self.cell = nn.LSTMCell(vocab, hidden)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, objects: torch.Tensor, generator: torch.Generator | None = None, greedy: bool = False):
        """(symbols (B, L) long, log-probability of the message (B,), summed entropy of its symbols (B,))."""
        h = self.encode(objects)
        c = torch.zeros_like(h)
        x = objects.new_zeros(objects.shape[0], self.vocab)
        symbols, log_prob, entropy = [], 0.0, 0.0
        for _ in range(self.length):
            h, c = self.cell(x, (h, c))
            logp = F.log_softmax(self.out(h), -1)
            if greedy:
                s = logp.argmax(-1)
            else:
                s = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
            log_prob = log_prob + logp.gather(1, s[:, None]).squeeze(1)
            entropy = entropy - (logp.exp() * logp).sum(-1)
            symbols.append(s)
            x = F.one_hot(s, self.vocab).to(objects.dtype)
        return torch.stack(symbols, 1), log_prob, entropy


class Receiver(nn.Module):
    def __init__(self, attribute_size: int, vocab: int, hidden: int):
        super().__init__()
        self.vocab = vocab
        self.cell = nn.LSTMCell(vocab, hidden)
        self.project = nn.Linear(hidden, hidden)
        self.embed = nn.Linear(attribute_size, hidden)

    def forward(self, message: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) of the candidates (B, K, attribute_size) given the messages (B, L)."""
        b = message.shape[0]
        h = candidates.new_zeros(b, self.cell.hidden_size)
        c = torch.zeros_like(h)
        for t in range(message.shape[1]):
            h, c = self.cell(F.one_hot(message[:, t], self.vocab).to(candidates.dtype), (h, c))
        query = self.project(h)
        return (self.embed(candidates) @ query[:, :, None]).squeeze(-1)


@dataclass
class Team:
    sender: Sender
    receiver: Receiver
    sender_opt: torch.optim.Optimizer
    receiver_opt: torch.optim.Optimizer


def redraw(module: nn.Module, seed: int) -> None:
    """Re-initialise every parameter of `module` with its layers' own init (`reset_parameters`), drawn from
    a generator seeded by `seed` (the global random state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in module.modules():
            if m is not module and hasattr(m, "reset_parameters"):
                m.reset_parameters()


def new_team(options, seed: int) -> Team:
    """The agents of a game at initialisation (the same for every arm of a seed) and their optimizers."""
    a = options.colours + options.shapes
    sender = Sender(a, options.vocab, options.message_length, options.game_hidden)
    receiver = Receiver(a, options.vocab, options.game_hidden)
    redraw(sender, derive_seed("game/init", seed, 0))
    redraw(receiver, derive_seed("game/init", seed, 1))
    return Team(sender, receiver, torch.optim.Adam(sender.parameters(), lr=options.game_lr),
                torch.optim.Adam(receiver.parameters(), lr=options.game_lr))


# ------------------------------------------------------------------------------------------- forgetting
def keep_masks(module: nn.Module, keep: float) -> dict[str, torch.Tensor]:
    """Per parameter tensor, a bool mask of its round(keep x numel) entries largest in magnitude now."""
    masks = {}
    for name, p in module.named_parameters():
        k = round(keep * p.numel())
        mask = torch.zeros(p.numel(), dtype=torch.bool)
        if k:
            mask[torch.topk(p.detach().abs().flatten(), k).indices] = True
        masks[name] = mask.view(p.shape)
    return masks


def forget(module: nn.Module, masks: dict[str, torch.Tensor], seed: int) -> None:
    """Partial forgetting: every entry outside `masks` is redrawn with the module's own init (seeded by
    `seed`); the masked entries keep their values bit for bit."""
    old = {n: p.detach().clone() for n, p in module.named_parameters()}
    redraw(module, seed)
    with torch.no_grad():
        for n, p in module.named_parameters():
            p.copy_(torch.where(masks[n], old[n], p))


def clear_state(opt: torch.optim.Optimizer) -> None:
    """Forget an optimizer's moments (as if it had just been made)."""
    opt.state.clear()


def intervene(arm: str, team: Team, step: int, options, seed: int, masks: dict) -> str | None:
    """Apply the arm's intervention due after iteration `step` (if any); returns what was done."""
    if arm == "receiver-reset" and step % options.reset_every == 0:
        redraw(team.receiver, derive_seed("game/reset", seed, step // options.reset_every))
        clear_state(team.receiver_opt)
        return "receiver reset"
    if arm == "partial-forget" and step % options.forget_every == 0:
        event = step // options.forget_every
        forget(team.sender, masks["sender"], derive_seed("game/forget", seed, event, 0))
        forget(team.receiver, masks["receiver"], derive_seed("game/forget", seed, event, 1))
        clear_state(team.sender_opt)
        clear_state(team.receiver_opt)
        return "partial forget"
    return None


# --------------------------------------------------------------------------------------------- playing
def sample_games(n_objects: int, batch: int, candidates: int, g: torch.Generator, targets: torch.Tensor | None = None):
    """(targets (B,), candidate objects (B, K), position of the target among them (B,)): the targets uniform
    (or those given), the distractors distinct objects other than the target, the order random."""
    if targets is None:
        targets = torch.randint(n_objects, (batch,), generator=g)
    noise = torch.rand(batch, n_objects, generator=g)
    noise[torch.arange(batch), targets] = 2.0   # never among the smallest
    distractors = noise.argsort(1)[:, :candidates - 1]
    order = torch.rand(batch, candidates, generator=g).argsort(1)
    shown = torch.cat([targets[:, None], distractors], 1).gather(1, order)
    position = (order == 0).float().argmax(1)
    return targets, shown, position


def train_step(team: Team, objects: torch.Tensor, games, g_symbols: torch.Generator, entropy_weight: float) -> dict:
    """One iteration of both agents on a batch of games; {accuracy, entropy} of the batch (Python floats)."""
    targets, shown, position = games
    symbols, log_prob, entropy = team.sender(objects[targets], generator=g_symbols)
    logits = team.receiver(symbols, objects[shown])
    ce = F.cross_entropy(logits, position, reduction="none")
    reward = -ce.detach()
    n = reward.numel()
    baseline = (reward.sum() - reward) / (n - 1) if n > 1 else torch.zeros_like(reward)
    sender_loss = -((reward - baseline) * log_prob).mean() - entropy_weight * entropy.mean()
    team.sender_opt.zero_grad(set_to_none=True)
    team.receiver_opt.zero_grad(set_to_none=True)
    (ce.mean() + sender_loss).backward()
    team.sender_opt.step()
    team.receiver_opt.step()
    return {"accuracy": (logits.argmax(1) == position).float().mean().item(), "entropy": entropy.mean().item()}


# --------------------------------------------------------------------------------------------- measures
def ranks(x) -> np.ndarray:
    """Ranks 0..n-1 of `x`, ties given their average rank (as Spearman's correlation needs)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    new = np.r_[True, xs[1:] != xs[:-1]]
    starts = np.flatnonzero(new)
    counts = np.diff(np.r_[starts, len(x)])
    average = starts + (counts - 1) / 2.0
    out = np.empty(len(x))
    out[order] = average[np.cumsum(new) - 1]
    return out


def spearman(x, y) -> float:
    """Spearman's rank correlation (Pearson's of the average ranks); 0.0 where either side is constant."""
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    norm = math.sqrt(float((rx * rx).sum()) * float((ry * ry).sum()))
    return float((rx * ry).sum() / norm) if norm > 0 else 0.0


def pairwise_hamming(rows) -> np.ndarray:
    """Hamming distances of every pair i < j of the rows of an (N, D) array, in `np.triu_indices(N, 1)` order."""
    a = np.asarray(rows)
    i, j = np.triu_indices(len(a), 1)
    return (a[i] != a[j]).sum(1)


def topographic_similarity(meanings, messages) -> float:
    """Spearman correlation between the pairwise Hamming distances of the meanings (N, attributes) and of
    their messages (N, length), over all pairs. A constant message (or meaning) distance gives 0.0."""
    return spearman(pairwise_hamming(meanings), pairwise_hamming(messages))


@torch.no_grad()
def evaluate(team: Team, objects: torch.Tensor, meanings: torch.Tensor, eval_games) -> dict:
    """Topographic similarity of the sender's greedy messages for every object, their number of distinct
    messages, and the greedy accuracy on the fixed evaluation games."""
    messages, _, _ = team.sender(objects, greedy=True)
    targets, shown, position = eval_games
    symbols, _, _ = team.sender(objects[targets], greedy=True)
    logits = team.receiver(symbols, objects[shown])
    return {"topographic_similarity": topographic_similarity(meanings.numpy(), messages.numpy()),
            "accuracy": (logits.argmax(1) == position).float().mean().item(),
            "unique_messages": len({tuple(m) for m in messages.tolist()})}


# ----------------------------------------------------------------------------------------------- driver
def _state_tensors(team: Team, g_games: torch.Generator, g_symbols: torch.Generator) -> tuple[dict, dict]:
    tensors = {f"sender.{k}": v for k, v in team.sender.state_dict().items()}
    tensors |= {f"receiver.{k}": v for k, v in team.receiver.state_dict().items()}
    meta = {}
    for who, opt in (("s", team.sender_opt), ("r", team.receiver_opt)):
        flat, meta[who] = optimizer_to_flat(opt)
        tensors |= {who + k: v for k, v in flat.items()}
    tensors["rng.games"], tensors["rng.symbols"] = g_games.get_state(), g_symbols.get_state()
    return {k: v.detach().clone().contiguous() for k, v in tensors.items()}, meta


def _load_state(team: Team, tensors: dict, meta: dict, g_games: torch.Generator, g_symbols: torch.Generator) -> None:
    for prefix, module in (("sender.", team.sender), ("receiver.", team.receiver)):
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    for who, opt in (("s", team.sender_opt), ("r", team.receiver_opt)):
        optimizer_from_flat(opt, {k[1:]: v for k, v in tensors.items() if k.startswith(who + "opt.")}, meta[who])
    g_games.set_state(tensors["rng.games"])
    g_symbols.set_state(tensors["rng.symbols"])


def train_game(options, seed: int, arm: str, progress: Callable[[int], None] | None = None,
               checkpoint=None) -> tuple[list[dict], dict]:
    """Play `options.game_steps` iterations of the game under `arm`; (rows, summary).

    `rows`: one per measure (iteration 0, every `game_eval_every`, the last): arm, seed, step,
    topographic_similarity, accuracy, train_accuracy, sender_entropy, unique_messages, intervention (what
    was done after that iteration, if anything). `summary`: the last row's measures. Deterministic for a
    seed. `checkpoint`: a store unit (`save_checkpoint` / `load_checkpoint`) to resume from and save to
    every `options.game_checkpoint_every` iterations; `progress(step)` is called at every measure and
    checkpoint."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; valid: {', '.join(ARMS)}")
    progress = progress or (lambda step: None)
    objects = one_hot_objects(options.colours, options.shapes)
    meanings = attributes(options.colours, options.shapes)
    n = len(objects)
    team = new_team(options, seed)
    masks = {"sender": keep_masks(team.sender, options.forget_keep),
             "receiver": keep_masks(team.receiver, options.forget_keep)} if arm == "partial-forget" else {}
    eval_games = sample_games(n, EVAL_GAMES_PER_OBJECT * n, options.candidates, generator("game/eval", seed),
                              targets=torch.arange(n).repeat(EVAL_GAMES_PER_OBJECT))   # every object equally often
    g_games, g_symbols = generator("game/batches", seed), generator("game/symbols", seed)
    total = options.game_steps
    step, rows, window = 0, [], [0.0, 0.0, 0]

    loaded = checkpoint.load_checkpoint() if checkpoint is not None else None
    if loaded is not None:
        tensors, state = loaded
        _load_state(team, tensors, state["optimizers"], g_games, g_symbols)
        step, rows, window = int(state["step"]), list(state["rows"]), list(state["window"])
        progress(step)
    else:
        rows.append(_row(arm, seed, 0, evaluate(team, objects, meanings, eval_games), window))
    every = options.game_checkpoint_every
    while step < total:
        out = train_step(team, objects, sample_games(n, options.game_batch_size, options.candidates, g_games),
                         g_symbols, options.game_entropy)
        step += 1
        window[0] += out["accuracy"]
        window[1] += out["entropy"]
        window[2] += 1
        measured = step % options.game_eval_every == 0 or step == total
        if measured:
            rows.append(_row(arm, seed, step, evaluate(team, objects, meanings, eval_games), window))
            window = [0.0, 0.0, 0]
        if step < total:
            done = intervene(arm, team, step, options, seed, masks)
            if done and measured:
                rows[-1]["intervention"] = done
        if checkpoint is not None and every and step % every == 0 and step < total:
            tensors, meta = _state_tensors(team, g_games, g_symbols)
            checkpoint.save_checkpoint(tensors, {"step": step, "rows": rows, "window": window, "optimizers": meta})
            progress(step)
        elif measured:
            progress(step)
    last = rows[-1]
    summary = {"arm": arm, "seed": seed, "steps": total,
               **{k: last[k] for k in ("topographic_similarity", "accuracy", "train_accuracy", "sender_entropy",
                                       "unique_messages")}}
    return rows, summary


def _row(arm: str, seed: int, step: int, measures: dict, window: list) -> dict:
    count = window[2]
    return {"arm": arm, "seed": seed, "step": step, **measures,
            "train_accuracy": window[0] / count if count else None,
            "sender_entropy": window[1] / count if count else None, "intervention": None}
