"""A small byte-level GPT, trained for a fixed time budget. The file agents edit.

Runs on CUDA (bf16 autocast) when a GPU is present and on the CPU otherwise. The harness in
prepare.py gives the data, the time budget and the seed, and scores the model handed to it.
"""

import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from prepare import EVAL_SEQ_LEN, SEED, TIME_BUDGET, VOCAB_SIZE, TrainLoader, hand_over, report

# ---------------------------------------------------------------------------
# Hyperparameters
# ---------------------------------------------------------------------------

N_LAYER = 4
N_HEAD = 4
N_EMBD = 128
MLP_RATIO = 4
DROPOUT = 0.0
SEQ_LEN = EVAL_SEQ_LEN  # training context; positions past it would go untrained
BATCH_SIZE = 16
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 0.1
BETA1 = 0.9
BETA2 = 0.95
WARMUP_FRACTION = 0.05  # of the time budget
FINAL_LR_FRACTION = 0.1  # learning rate at the end of the cosine decay, relative to the peak
GRAD_CLIP = 1.0
ACTIVATION = "gelu"  # one of: gelu, relu, silu

# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(N_EMBD, 3 * N_EMBD)
        self.proj = nn.Linear(N_EMBD, N_EMBD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time_steps, channels = x.shape
        q, k, v = self.qkv(x).split(channels, dim=2)
        q, k, v = (
            t.view(batch, time_steps, N_HEAD, channels // N_HEAD).transpose(1, 2)
            for t in (q, k, v)
        )
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=DROPOUT if self.training else 0.0
        )
        return self.proj(y.transpose(1, 2).reshape(batch, time_steps, channels))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        activations = {"gelu": nn.GELU(), "relu": nn.ReLU(), "silu": nn.SiLU()}
        self.ln1 = nn.LayerNorm(N_EMBD)
        self.attn = CausalSelfAttention()
        self.ln2 = nn.LayerNorm(N_EMBD)
        self.mlp = nn.Sequential(
            nn.Linear(N_EMBD, MLP_RATIO * N_EMBD),
            activations[ACTIVATION],
            nn.Linear(MLP_RATIO * N_EMBD, N_EMBD),
            nn.Dropout(DROPOUT),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(VOCAB_SIZE, N_EMBD)
        self.position_embedding = nn.Embedding(max(SEQ_LEN, EVAL_SEQ_LEN), N_EMBD)
        self.blocks = nn.ModuleList(Block() for _ in range(N_LAYER))
        self.ln_final = nn.LayerNorm(N_EMBD)
        self.head = nn.Linear(N_EMBD, VOCAB_SIZE, bias=False)
        self.head.weight = self.token_embedding.weight  # weight tying
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.token_embedding(idx) + self.position_embedding(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_final(x))


# ---------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------

torch.manual_seed(SEED)
device = "cuda" if torch.cuda.is_available() else "cpu"
autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda")
model = GPT().to(device)
optimizer = torch.optim.AdamW(
    model.parameters(), lr=LEARNING_RATE, betas=(BETA1, BETA2), weight_decay=WEIGHT_DECAY
)
loader = TrainLoader(BATCH_SIZE, SEQ_LEN, device)
print(f"device: {device}, parameters: {sum(p.numel() for p in model.parameters()):,}")


def learning_rate(progress: float) -> float:
    """Linear warmup, then cosine decay to FINAL_LR_FRACTION, over the fraction of budget used."""
    if progress < WARMUP_FRACTION:
        return LEARNING_RATE * progress / WARMUP_FRACTION
    decay = (progress - WARMUP_FRACTION) / (1.0 - WARMUP_FRACTION)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(decay, 1.0)))
    return LEARNING_RATE * (FINAL_LR_FRACTION + (1.0 - FINAL_LR_FRACTION) * cosine)


# ---------------------------------------------------------------------------
# Training loop: runs until the time budget is spent
# ---------------------------------------------------------------------------

model.train()
step = 0
started = time.perf_counter()
while (elapsed := time.perf_counter() - started) < TIME_BUDGET:
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(elapsed / TIME_BUDGET)
    x, y = loader.next_batch()
    with autocast:
        logits = model(x)
    loss = F.cross_entropy(logits.float().view(-1, VOCAB_SIZE), y.reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    optimizer.step()
    loss_value = loss.item()
    if not math.isfinite(loss_value):
        raise SystemExit(f"FAIL: loss is {loss_value} at step {step}")
    report(step, loss_value)
    if step % 50 == 0:
        print(f"step {step:5d}  loss {loss_value:.4f}  time {elapsed:6.1f}s", flush=True)
    step += 1

# ---------------------------------------------------------------------------
# Summary: the harness scores the model in a separate process
# ---------------------------------------------------------------------------

training_seconds = time.perf_counter() - started
print(f"steps: {step}")
print(f"training_seconds: {training_seconds:.1f}")
hand_over(model)
