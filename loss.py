"""Queue-based InfoNCE with soft distillation targets from the momentum teacher (docs/method.md, steps 2-5).

For a window of N image-report pairs, the teacher's features I', T' (N, D) and a queue of the K
most recent teacher features Q_I, Q_T (K, D) form the banks

    B_T = [T' ; Q_T],   B_I = [I' ; Q_I]                                  (N + K, D)

that every student row is compared with (MoCo's queue, He et al. 2020). The targets mix the
teacher's own similarity distribution with the ground-truth positives (ALBEF's momentum
distillation, Li et al. 2021):

    Y_i2t = α · softmax(s · I' B_T^T) + (1 − α) · P                     (N, N + K)

and the loss is the symmetric cross-entropy between Y and the student's distribution,

    L = (1 / 2N) Σ_rows [ −Σ_c Y_i2t log softmax(s · I B_T^T) − Σ_c Y_t2i log softmax(s · T B_I^T) ].

P is one-hot (row n's positive is column n) or, duplicate-aware, uniform over every bank column
whose report is identical to row n's: with many identical "normal" reports, one-hot targets
would push apart pairs that say exactly the same thing.

The bank holds no gradient, so each row's loss is independent of the other rows: this is what
lets accumulate.py split the window into micro-batches and still get the gradient of the whole.

Depends on torch and the standard library only.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


def upcast(x: torch.Tensor) -> torch.Tensor:
    """float16 / bfloat16 (from autocast) to float32; float32 and float64 stay as they are.
    Similarities and softmaxes over thousands of columns need at least float32."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class FeatureQueue(nn.Module):
    """A ring buffer of the last `size` teacher image and text features and their report ids.

    Buffers (saved in state_dict, so a checkpoint restores the queue exactly):
      image, text (K, D) features; ids (K,) report ids; ptr, the slot the next entry goes to;
      filled, how many slots hold real entries (the queue starts empty, and empty slots must
      never act as negatives).
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 0:
            raise ValueError(f"queue size must be >= 0, got {size}")
        self.size = size
        self.register_buffer("image", torch.zeros(size, dim))
        self.register_buffer("text", torch.zeros(size, dim))
        self.register_buffer("ids", torch.zeros(size, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def __len__(self):
        return int(self.filled)

    def contents(self):
        """(image (n, D), text (n, D), ids (n,)) of the filled slots. The queue fills slots
        0, 1, 2, ... in order before it wraps, so the filled ones are always the first n."""
        n = int(self.filled)
        return self.image[:n], self.text[:n], self.ids[:n]

    @torch.no_grad()
    def enqueue(self, image: torch.Tensor, text: torch.Tensor, ids: torch.Tensor):
        """Write n entries at the pointer, wrapping around the end, and advance the pointer by n.

        The wrap is handled slot by slot, so K need not be a multiple of n. When n > K only the
        last K entries can be held, exactly as if they had been written one at a time."""
        if self.size == 0:
            return
        n = image.shape[0]
        start = 0 if n <= self.size else n - self.size   # entries that would be overwritten anyway
        slots = (self.ptr + torch.arange(start, n, device=self.ptr.device)) % self.size
        self.image[slots] = image[start:].to(self.image.dtype)
        self.text[slots] = text[start:].to(self.text.dtype)
        self.ids[slots] = ids[start:].to(self.ids.device)
        self.ptr.copy_((self.ptr + n) % self.size)
        self.filled.copy_(torch.clamp(self.filled + n, max=self.size))


def positive_matrix(row_ids: torch.Tensor, bank_ids: torch.Tensor, offset: int,
                    duplicate_aware: bool = False, dtype=torch.float32) -> torch.Tensor:
    """P (n, M): row r's positives among the M bank columns; each row sums to 1.

    one-hot: the row's own pair sits at column offset + r.
    duplicate-aware: uniform over every column whose report id equals the row's (its own pair
    included, since the window is part of the bank). A row whose id is nowhere in the bank has no
    positive at all, which can only mean the bank was assembled wrongly: ValueError, not NaN."""
    n, M = row_ids.shape[0], bank_ids.shape[0]
    if duplicate_aware:
        same = (row_ids[:, None] == bank_ids[None, :]).to(dtype)   # (n, M)
        count = same.sum(dim=1, keepdim=True)                      # (n, 1), >= 1 in a sound bank
        if not bool((count > 0).all()):
            missing = row_ids[(count[:, 0] == 0)].tolist()
            raise ValueError(f"positive_matrix: report id(s) {missing[:5]} of the rows are not in "
                             f"the bank; the bank must hold every row's own pair (the window)")
        return same / count
    P = torch.zeros(n, M, device=bank_ids.device, dtype=dtype)
    P[torch.arange(n), offset + torch.arange(n)] = 1.0
    return P


@torch.no_grad()
def soft_targets(teacher_rows: torch.Tensor, bank: torch.Tensor, scale: torch.Tensor,
                 alpha: float, positives: torch.Tensor) -> torch.Tensor:
    """Y = α · softmax(s · teacher_rows bank^T) + (1 − α) · P, (n, M); rows sum to 1.

    s is the student's temperature (detached): the teacher has none of its own (ALBEF does the
    same), so its distribution sharpens as the student's s grows."""
    if alpha == 0:
        return positives
    teacher_probs = F.softmax(upcast(scale.detach()) * upcast(teacher_rows) @ upcast(bank).T, dim=1)
    return alpha * teacher_probs + (1.0 - alpha) * positives


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Σ over rows of −Σ_c Y log softmax(logits): a sum, so the caller chooses the normaliser."""
    return -(targets * F.log_softmax(logits, dim=1)).sum()


def msd_loss(image: torch.Tensor, text: torch.Tensor, bank_image: torch.Tensor,
             bank_text: torch.Tensor, targets_i2t: torch.Tensor, targets_t2i: torch.Tensor,
             scale: torch.Tensor, *, normaliser: int) -> torch.Tensor:
    """The symmetric loss of the student rows `image`, `text` (n, D) against the frozen banks.

    Features of unit L2 norm (the dot products are the cosines); scale is s = exp(logit_scale).
    normaliser: the N of 1/(2N), required: the number of rows of the whole WINDOW. For one batch
    it is n; under gradient accumulation it is k · n, so the micro-batch losses add up to the loss
    of the whole window and their gradients to its gradient (a mean over each micro-batch would
    weigh them wrongly when their sizes differ, and give k times the gradient)."""
    scale = upcast(scale)
    logits_i2t = scale * upcast(image) @ upcast(bank_text).T     # (n, M)
    logits_t2i = scale * upcast(text) @ upcast(bank_image).T     # (n, M)
    total = soft_cross_entropy(logits_i2t, targets_i2t) + soft_cross_entropy(logits_t2i, targets_t2i)
    return total / (2 * normaliser)


def clip_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor,
              ids: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP (Radford et al. 2021): symmetric InfoNCE within the batch, student features on both
    sides. The ablation baseline.

    ids: the rows' report ids (B,). Left out, the i-th image and the i-th text alone are a positive
    pair (one-hot). Given, a row's positives are every column with the same report, uniformly: the
    duplicate-aware P of msd_loss, with the batch as its own bank. That P is symmetric, so the
    text-to-image direction uses it as it is. With all ids distinct it is the one-hot loss."""
    return symmetric_infonce(upcast(scale) * upcast(image) @ upcast(text).T, ids)


def symmetric_infonce(logits: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's loss on a square matrix of logits (image rows, text columns), one-hot or, with ids,
    duplicate-aware (clip_loss)."""
    if ids is None:
        labels = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    P = positive_matrix(ids, ids, 0, duplicate_aware=True, dtype=logits.dtype)   # (B, B)
    return (soft_cross_entropy(logits, P) + soft_cross_entropy(logits.T, P)) / (2 * logits.shape[0])


def word_patch_loss(patches: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor,
                    scale: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
    """A local alignment term between words and patches: FILIP's token-wise late interaction
    (Yao et al. 2022), as GLoRIA (Huang et al. 2021) aligns words with image regions.

    patches (B, P, D) and words (B, L, D) of unit norm (model.DualEncoder.forward(words=True)),
    word_mask (B, L) True for real tokens. Image i and report j score the mean, over j's real
    words, of each word's best cosine with any patch of i:

        sim(i, j) = (1 / |j|) Σ_w max_p  patches[i, p] · words[j, w]

    and the term is CLIP's symmetric InfoNCE on s · sim within the batch (ids: duplicate-aware, as
    clip_loss). A word can only raise sim(i, j) through one patch of image i, so to tell its own
    image from the batch's others a finding's word must find a patch that shows that finding:
    the healthy patches every image has cannot do it. The (B, B, P, L) cosines are the memory."""
    sim = torch.einsum("ipd,jld->ijpl", upcast(patches), upcast(words)).amax(dim=2)   # (B, B, L)
    m = word_mask.to(sim.dtype)                                                     # (B, L)
    sim = (sim * m).sum(dim=-1) / m.sum(dim=-1).clamp(min=1)                        # (B, B)
    return symmetric_infonce(upcast(scale) * sim, ids)
