import pytest
import torch

from musicrl.config import EngineConfig, SamplingParams
from musicrl.errors import InvalidRequest
from musicrl.models.engine import GenerationEngine, GenerationRequest


# words both models know: the tiny model reads bytes, the toy model the toy world's words
PROMPTS = ["a fast bright high melody with vinyl crackle", "a slow, soft, low drone"]


@pytest.fixture(
    scope="module",
    params=[
        # tiny://: 0.4M random parameters, real MusicGen architecture and audio geometry (32 kHz, 50 frames/s, K = 4)
        "tiny://musicgen?seed=0",
        # toy://: trained on the toy world (16 kHz, 50 frames/s, K = 4, a word-level T5), prompts change its sound
        "toy://musicgen",
    ],
)
def engine(request: pytest.FixtureRequest) -> GenerationEngine:
    return GenerationEngine.from_uri(request.param)


def _hf_codes(engine: GenerationEngine, prompts: list[str], frames: int, **generate_kwargs) -> torch.Tensor:
    """Codes produced by transformers' own MusicgenForConditionalGeneration.generate.

    generate() returns audio only, so the codes are captured where it hands them to EnCodec.
    """
    captured = []
    decode = engine.model.audio_encoder.decode

    def capturing_decode(audio_codes, *args, **kwargs):
        captured.append(audio_codes.clone())
        return decode(audio_codes, *args, **kwargs)

    engine.model.audio_encoder.decode = capturing_decode
    try:
        inputs = engine.bundle.tokenizer(prompts, padding=True, return_tensors="pt")
        # HF counts new tokens on the delayed grid: T frames need T + K - 1 steps
        engine.model.generate(**inputs, max_new_tokens=frames + engine.num_codebooks - 1, **generate_kwargs)
    finally:
        del engine.model.audio_encoder.decode
    (codes,) = captured
    return codes[0]  # [B, K, T]


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_greedy_codes_equal_transformers_generate(engine, guidance_scale):
    params = SamplingParams(duration_s=0.6, top_k=1, guidance_scale=guidance_scale)
    audio, codes = engine.generate(PROMPTS, params, seeds=[1, 2])
    frames = engine.frames_for(0.6)
    expected = _hf_codes(engine, PROMPTS, frames, do_sample=False, guidance_scale=guidance_scale)
    assert codes.shape == (2, engine.num_codebooks, frames)
    assert torch.equal(codes, expected)
    assert audio.shape == (2, frames * engine.sample_rate // 50)


def test_top_k_one_sampling_equals_transformers_top_k_one(engine):
    params = SamplingParams(duration_s=0.4, top_k=1, temperature=0.7)
    _, codes = engine.generate(PROMPTS, params, seeds=[5, 6])
    expected = _hf_codes(
        engine, PROMPTS, engine.frames_for(0.4), do_sample=True, top_k=1, temperature=0.7, guidance_scale=3.0
    )
    assert torch.equal(codes, expected)


def test_same_seed_same_codes_different_seed_different_codes(engine):
    params = SamplingParams(duration_s=0.5)
    _, first = engine.generate(["rock"], params, seeds=[11])
    _, again = engine.generate(["rock"], params, seeds=[11])
    _, other = engine.generate(["rock"], params, seeds=[12])
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_a_request_is_unaffected_by_its_batch_mates(engine):
    mine = GenerationRequest("calm ambient pads", SamplingParams(duration_s=0.8, temperature=0.9, top_k=50), seed=3)
    (alone,) = engine.generate_batch([mine])
    batch = engine.generate_batch(
        [
            GenerationRequest("drum and bass", SamplingParams(duration_s=0.3, guidance_scale=1.0), seed=1),
            mine,
            GenerationRequest("a" * 300, SamplingParams(duration_s=1.2, temperature=0.0), seed=2),
            GenerationRequest("violin", SamplingParams(duration_s=0.8, top_k=0, guidance_scale=5.0), seed=3),
        ]
    )
    assert torch.equal(batch[1].codes, alone.codes)
    torch.testing.assert_close(batch[1].audio, alone.audio)
    assert [c.codes.shape[-1] for c in batch] == [15, 40, 60, 40]


def test_prompts_steer_the_codes(engine):
    params = SamplingParams(duration_s=0.5, temperature=0.0)
    _, codes = engine.generate(["a loud bright high melody", "a soft dark low drone"], params, seeds=[0, 0])
    assert not torch.equal(codes[0], codes[1])


def test_duration_sets_frames_and_samples(engine):
    (clip,) = engine.generate_batch([GenerationRequest("x", SamplingParams(duration_s=1.0), seed=0)])
    assert clip.codes.shape == (4, 50)
    assert clip.audio.shape == (engine.sample_rate,)
    assert clip.sample_rate == engine.sample_rate == engine.model.config.audio_encoder.sampling_rate
    assert clip.duration_s == pytest.approx(1.0)
    assert clip.codes.dtype == torch.int64
    assert int(clip.codes.min()) >= 0 and int(clip.codes.max()) < engine.vocab_size
    assert float(clip.audio.abs().max()) > 0


def test_progress_callback_sees_every_step(engine):
    calls = []
    engine.generate_batch(
        [GenerationRequest("x", SamplingParams(duration_s=0.2), seed=0)], on_step=lambda d, t: calls.append((d, t))
    )
    steps = engine.frames_for(0.2) + engine.num_codebooks - 1
    assert calls == [(i, steps) for i in range(1, steps + 1)]


def test_clip_longer_than_the_position_table_is_refused(engine):
    too_long = SamplingParams(duration_s=60.0)  # 3000 frames > 2048 positions
    with pytest.raises(InvalidRequest, match="at most 40.9 s"):
        engine.generate(["x"], too_long, seeds=[0])


def test_seed_count_must_match_prompts(engine):
    with pytest.raises(InvalidRequest, match="one seed per prompt"):
        engine.generate(["a", "b"], SamplingParams(duration_s=0.1), seeds=[1])


def test_encodec_decodes_in_float32_whatever_the_serving_dtype():
    full = GenerationEngine.from_uri("tiny://musicgen?seed=0")
    half = GenerationEngine.from_uri("tiny://musicgen?seed=0", EngineConfig(dtype="bfloat16"))
    assert next(half.model.decoder.parameters()).dtype == torch.bfloat16  # the decoder does serve in bf16
    assert {p.dtype for p in half.model.audio_encoder.parameters()} == {torch.float32}
    codes = torch.randint(0, full.vocab_size, (full.num_codebooks, 25), generator=torch.Generator().manual_seed(0))
    # the same float32 weights, never rounded through bf16: the same waveform to the bit
    assert torch.equal(half.decode_audio([codes])[0], full.decode_audio([codes])[0])
