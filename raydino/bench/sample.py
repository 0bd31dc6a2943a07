"""``raydino bench sample``: one generator pass against diffusion sampling, same device, same run.

The project's promise over diffusion is speed: an image costs one pass of
the generator instead of hundreds of network evaluations. The baseline is
DiT-XL/2 at 256 px (diffusers' ``DiTTransformer2DModel`` plus the SD VAE
decoder, random weights: speed does not depend on them) with 250 steps and
classifier-free guidance (two evaluations per step, batched). Needs the
``bench`` extra (diffusers); runs without Ray.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from raydino.bench.record import header, save
from raydino.config import load_config
from raydino.models.generator import Generator


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device, warmup: int = 2, repeats: int = 5) -> float:
    """Median seconds per call after warm-up."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def build_generator(preset: str, device: torch.device, dim: int = 768, grid: int = 4, compile: bool = False):
    cfg = load_config(preset)
    g = Generator(cfg.model, dim, grid).to(device).eval().requires_grad_(False)
    g = g.to(memory_format=torch.channels_last)
    res = cfg.train.stages[-1].resolution
    fwd = torch.compile(g, mode="max-autotune-no-cudagraphs") if compile else g

    def sample(batch: int) -> torch.Tensor:
        code = torch.randn(batch, grid * grid, dim, device=device)
        noise = g.draw_noise(batch, res, device=device)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            return fwd(code, noise, res)

    return sample, res, sum(p.numel() for p in g.parameters())


def build_dit(device: torch.device, steps: int, guidance: float = 4.0):
    """DiT-XL/2 (28 layers, 1152 wide, patch 2, 32x32x4 latents) + SD VAE decoder, DDIM-style loop."""
    from diffusers import AutoencoderKL, DDIMScheduler, DiTTransformer2DModel

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    dit = DiTTransformer2DModel(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
                                num_layers=28, sample_size=32, patch_size=2, norm_type="ada_norm_zero",
                                num_embeds_ada_norm=1000).to(device, dtype).eval()
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                        block_out_channels=[128, 256, 512, 512], layers_per_block=2).to(device, dtype).eval()
    sched = DDIMScheduler(num_train_timesteps=1000)
    sched.set_timesteps(steps)

    @torch.inference_mode()
    def sample(batch: int) -> torch.Tensor:
        x = torch.randn(batch, 4, 32, 32, device=device, dtype=dtype)
        labels = torch.randint(0, 1000, (batch,), device=device)
        labels = torch.cat([labels, torch.full_like(labels, 1000)])  # the null class for guidance
        for t in sched.timesteps:
            out = dit(torch.cat([x, x]), timestep=t.expand(2 * batch).to(device), class_labels=labels).sample
            eps_c, eps_u = out[:, :4].chunk(2)
            eps = eps_u + guidance * (eps_c - eps_u)
            x = sched.step(eps, t, x).prev_sample
        return vae.decode(x / 0.18215).sample

    return sample, sum(p.numel() for p in dit.parameters())


def run_bench(preset: str = "ffhq256", batches: tuple[int, ...] = (1, 8, 64), dit_steps: int = 250,
              dit_batch: int = 1, compile: bool = False, device: str | None = None, out: str | None = None) -> dict:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.backends.cudnn.benchmark = True
    gen, res, gen_params = build_generator(preset, dev, compile=compile)
    figures: dict = {**header("sample"), "preset": preset, "resolution": res, "generator_params": gen_params,
                     "compile": compile, "generator": {}}
    for b in batches:
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t = timed(lambda b=b: gen(b), dev)
        figures["generator"][b] = {"latency_ms": t * 1e3, "images_per_s": b / t,
                                   "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None}
        print(f"generator {res}px batch {b}: {t * 1e3:.2f} ms, {b / t:.1f} images/s", flush=True)
    dit, dit_params = build_dit(dev, dit_steps)
    t_dit = timed(lambda: dit(dit_batch), dev, warmup=1, repeats=1 if dev.type == "cpu" else 3)
    dit_rate = dit_batch / t_dit
    figures["dit"] = {"params": dit_params, "steps": dit_steps, "cfg": True, "batch": dit_batch,
                      "latency_ms": t_dit * 1e3, "images_per_s": dit_rate}
    best_b = max(figures["generator"], key=lambda b: figures["generator"][b]["images_per_s"])
    best = figures["generator"][best_b]["images_per_s"]
    b1 = figures["generator"][batches[0]]["images_per_s"]
    figures["speedup_best_batch"] = best / dit_rate
    figures["speedup_batch1"] = b1 / dit_rate
    print(f"DiT-XL/2 {dit_steps} steps + CFG, batch {dit_batch}: {t_dit:.2f} s/batch, {dit_rate:.3f} images/s")
    m = figures["machine"]
    print(f"machine: {m['gpu'] or m['cpu']} ({m['cores']} cores), torch {m['torch']}")
    print(f"speed-up vs DiT: batch {batches[0]}: {figures['speedup_batch1']:.0f}x; "
          f"best batch {best_b}: {figures['speedup_best_batch']:.0f}x")
    save(figures, out)
    return figures
