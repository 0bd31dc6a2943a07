"""``raydino bench sample``: the whole sampling path against diffusion sampling, same device, same run.

The project's promise over diffusion is speed: an image costs one
evaluation of the distilled student prior over 16 coarse tokens (its
teacher: K guided Heun steps, a conditional and a null evaluation each) and
one pass of the generator, instead of hundreds of evaluations of a large
network over 256 latent tokens. The preset's prior (the student where the
preset distils one, and its teacher beside it) and generator are timed
alone and as the whole path. The
baseline is DiT-XL/2 at 256 px (diffusers' ``DiTTransformer2DModel`` plus the SD VAE
decoder, random weights: speed does not depend on them) with 250 steps and
classifier-free guidance (two evaluations per step, batched). Needs the
``bench`` extra (diffusers); runs without Ray.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from raydino.bench.measure import default_device, median_seconds, peak_gpu_mib
from raydino.bench.record import header, save
from raydino.config import PriorConfig, load_config
from raydino.models.flow_prior import FlowPrior
from raydino.models.generator import ProgressiveGenerator
from raydino.models.student import student_of


def build_generator(preset: str, device: torch.device, dim: int = 768, grid: int = 4,
                    compile: bool = False) -> tuple[Callable[..., torch.Tensor], int, int]:
    """The preset's generator as a sampler of a batch (random codes unless given), its resolution, its size."""
    cfg = load_config(preset)
    g = ProgressiveGenerator(cfg.model, dim, grid).to(device).eval().requires_grad_(False)
    g = g.to(memory_format=torch.channels_last)
    res = cfg.train.stages[-1].resolution
    fwd = torch.compile(g, mode="max-autotune-no-cudagraphs") if compile else g

    def sample(batch: int, code: torch.Tensor | None = None) -> torch.Tensor:
        code = torch.randn(batch, grid * grid, dim, device=device) if code is None else code
        noise = g.draw_noise(batch, res, device=device)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            return fwd(code, noise, res)

    return sample, res, sum(p.numel() for p in g.parameters())


def build_prior(preset: str, device: torch.device, dim: int = 768, grid: int = 4, clip_dim: int = 512,
                student: bool = False) -> tuple[Callable[[int], torch.Tensor], PriorConfig, int]:
    """The preset's prior (or its student), drawing codes conditioned on a CLIP vector with guidance."""
    cfg = load_config(preset)
    prior = FlowPrior(cfg.prior, grid * grid, dim, clip_dim).to(device)
    if student:
        prior = student_of(prior, cfg.distill.sample_steps)
    prior = prior.eval().requires_grad_(False)

    def sample(batch: int) -> torch.Tensor:
        cond = torch.nn.functional.normalize(torch.randn(batch, clip_dim, device=device), dim=-1)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            return prior.sample(batch, cond=cond)

    return sample, prior.cfg, sum(p.numel() for p in prior.parameters())


def build_dit(device: torch.device, steps: int, guidance: float = 4.0) -> tuple[Callable[[int], torch.Tensor], int]:
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


def run_bench(preset: str = "ffhq256", batches: tuple[int, ...] = (1, 64), dit_steps: int = 250,
              dit_batches: tuple[int, ...] | None = None, compile: bool = False, device: str | None = None,
              skip_dit: bool = False, out: str | None = None) -> dict:
    """Time prior, generator and the whole path at each batch size, then DiT-XL/2 at ``dit_batches`` (default: the same)."""
    dev = torch.device(default_device(device))
    torch.backends.cudnn.benchmark = True
    gen, res, gen_params = build_generator(preset, dev, compile=compile)
    distils = load_config(preset).distill.steps > 0
    prior, pc, prior_params = build_prior(preset, dev, student=distils)
    teacher, tc, _ = build_prior(preset, dev)
    figures: dict = {**header("sample"), "preset": preset, "resolution": res, "generator_params": gen_params,
                     "prior_params": prior_params, "prior_kind": "student" if distils else "teacher",
                     "prior_steps": pc.sample_steps, "prior_solver": pc.solver, "teacher_steps": tc.sample_steps,
                     "compile": compile, "generator": {}, "prior": {}, "path": {}, "prior_teacher": {},
                     "path_teacher": {}}
    parts = (("prior", lambda b: prior(b)), ("generator", lambda b: gen(b)), ("path", lambda b: gen(b, prior(b))))
    if distils:
        parts += (("prior_teacher", lambda b: teacher(b)), ("path_teacher", lambda b: gen(b, teacher(b))))
    for b in batches:
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for part, fn in parts:
            t = median_seconds(lambda fn=fn, b=b: fn(b), dev)
            figures[part][b] = {"latency_ms": t * 1e3, "images_per_s": b / t}
        figures["path"][b]["peak_mem_gib"] = peak_gpu_mib() / 1024 if dev.type == "cuda" else None
        print(f"batch {b}: prior ({figures['prior_kind']}, K={pc.sample_steps} {pc.solver}, guided) "
              f"{figures['prior'][b]['latency_ms']:.2f} ms, generator {res}px "
              f"{figures['generator'][b]['latency_ms']:.2f} ms, whole path {figures['path'][b]['latency_ms']:.2f} ms, "
              f"{figures['path'][b]['images_per_s']:.1f} images/s", flush=True)
        if distils:
            speedup = figures["path_teacher"][b]["latency_ms"] / figures["path"][b]["latency_ms"]
            figures["path"][b]["speedup_of_student"] = speedup
            print(f"batch {b}: the teacher (K={tc.sample_steps} {tc.solver}, guided) "
                  f"{figures['prior_teacher'][b]['latency_ms']:.2f} ms, its whole path "
                  f"{figures['path_teacher'][b]['latency_ms']:.2f} ms: the student's path is {speedup:.1f}x faster",
                  flush=True)
    m = figures["machine"]
    print(f"machine: {m['gpu'] or m['cpu']} ({m['cores']} cores), torch {m['torch']}")
    if not skip_dit:
        dit, dit_params = build_dit(dev, dit_steps)
        figures["dit"] = {"params": dit_params, "steps": dit_steps, "cfg": True, "batches": {}}
        for b in dit_batches or batches:
            t_dit = median_seconds(lambda b=b: dit(b), dev, warmup=1, repeats=1 if dev.type == "cpu" else 3)
            figures["dit"]["batches"][b] = {"latency_ms": t_dit * 1e3, "images_per_s": b / t_dit}
            print(f"DiT-XL/2 {dit_steps} steps + CFG, batch {b}: {t_dit:.2f} s/batch, {b / t_dit:.3f} images/s")
            if b in figures["path"]:
                figures["dit"]["batches"][b]["speedup_of_path"] = figures["path"][b]["images_per_s"] / (b / t_dit)
                print(f"speed-up of the whole path vs DiT at batch {b}: "
                      f"{figures['dit']['batches'][b]['speedup_of_path']:.0f}x", flush=True)
    save(figures, out)
    return figures
