"""Reference transcription of Forget-Me-Not's attention re-steering (Zhang et al. 2023, "Forget-Me-Not: Learning to
Forget in Text-to-Image Diffusion Models"), torch only.

Source: github.com/SHI-Labs/Forget-Me-Not at commit a4a81e8203f968400ac76d48636d473f9386153e (the snapshot's HEAD):
src/train_attn.py, configs/attn.yaml, run.py, README.md.

The whole procedure (run.py lines 19-23 → src/train_attn.py `main`, lines 185-608):
  base: stabilityai/stable-diffusion-2-1-base (attn.yaml line 14). Optionally (use_ti: true, the shipped
  config, line 6) first learn textual-inversion tokens <s1>… for the concept (configs/ti.yaml, src/train_ti.py)
  and put them in the prompt instead of the plain concept words (train_attn.py lines 243-270, 90).
  data: the concept's own images, data/<concept>/ (lines 82-88), prompt "a photo of {concept}" (object) or "a
  photo in the style of {concept}" (style) (lines 90-96), random crop to 512 (lines 102-109).
  concept positions (lines 131-154): the token positions of the concept in the 77-token prompt (every
  occurrence), plus with use_pooler (true, attn.yaml line 8) every position holding <|endoftext|>.
  Note that SD 1.x pads with <|endoftext|>, so there every padding position counts. SD 2.1's diffusers
  tokenizer pads with '!' (id 0; huggingface/diffusers issue #2201), so there only the EOS token counts.
  per step (lines 530-573): latents of the images, ε ~ N(0, I), t ~ U{0..999}, x_t = add_noise (lines 536-551);
    one UNet forward with the prompt (line 560). A processor on every module whose name ends in 'attn2'
    (lines 321-327) records each cross-attention's softmax probabilities [B·heads, Q, 77] (lines 291-319);
    the loss is the Euclidean norm of all recorded probabilities at the concept positions, over every attn2
    layer, head, query and selected token: ‖cat_l P_l[:, :, concept]‖₂, NOT squared and NOT averaged
    (AttnController, lines 272-289; `fmn_attention_loss`). The denoising output is unused: no diffusion loss,
    no retain term.
  trained: the whole UNet (only_optimize_ca: false, attn.yaml line 7; with true only names containing 'attn2',
    lines 386-397); the text encoder stays frozen (train_text_encoder false).
  optimiser: AdamW(lr 2e-6, betas (0.9, 0.999), weight_decay 0.01, eps 1e-8) (attn.yaml lines 10, 42-45;
    train_attn.py lines 383-404), grad clip max_grad_norm 1.0 (yaml line 46, lines 567-569), constant lr,
    no warm-up (yaml lines 35-36), batch 1 (line 9), max_train_steps 35 (line 11), scale_lr false, fp32.
"""

from __future__ import annotations

import torch

REPO = "SHI-Labs/Forget-Me-Not"
COMMIT = "a4a81e8203f968400ac76d48636d473f9386153e"
DEFAULTS = dict(steps=35, lr=2e-6, batch_size=1, optimizer="AdamW", adam_betas=(0.9, 0.999), weight_decay=0.01,
                adam_eps=1e-8, max_grad_norm=1.0, lr_scheduler="constant", only_optimize_ca=False, use_pooler=True,
                use_ti=True, base="stabilityai/stable-diffusion-2-1-base")  # configs/attn.yaml lines 6-46


def fmn_concept_positions(prompt_ids: list[int], concept_ids: list[int], pooler_token_id: int,
                          use_pooler: bool = True, max_length: int | None = None) -> torch.Tensor:
    """concept_positions of ForgetMeNotDataset.__getitem__ (src/train_attn.py lines 131-154, commit a4a81e82):
    1 on every occurrence of the concept's token ids in the padded prompt ids, and (use_pooler) on every position
    equal to the <|endoftext|> id. Returns a bool [1, max_length] (the collate_fn turns it into a BoolTensor,
    line 175)."""
    max_length = len(prompt_ids) if max_length is None else max_length
    concept_positions = [0] * max_length
    for i, tok_id in enumerate(prompt_ids):
        if tok_id == concept_ids[0] and prompt_ids[i:i + len(concept_ids)] == concept_ids:
            concept_positions[i:i + len(concept_ids)] = [1] * len(concept_ids)
        if use_pooler and tok_id == pooler_token_id:
            concept_positions[i] = 1
    return torch.tensor(concept_positions)[None].bool()


def fmn_select(attn_prob: torch.Tensor, concept_positions: torch.Tensor) -> torch.Tensor:
    """AttnController.__call__ (src/train_attn.py lines 276-281, commit a4a81e82) for one attn2 layer:

        bs = concept_positions.shape[0];  head_num = attn_prob.shape[0] // bs
        attn_prob.masked_select(concept_positions[:, None, :].repeat(head_num, 1, 1)).reshape(-1, concept_positions[0].sum())

    attn_prob: [B·heads, Q, T] softmax probabilities (diffusers head_to_batch_dim order: row b·heads + h).
    concept_positions: bool [B, T]. The mask is tiled as row h·B + b, which is not the probabilities' row order;
    the two agree only for B = 1 or when every row has the same positions. The shipped config uses B = 1
    (attn.yaml line 9). With B > 1 this transcription does what the reference does, mismatch included.
    """
    bs, _ = concept_positions.shape
    head_num = attn_prob.shape[0] // bs
    return attn_prob.masked_select(concept_positions[:, None, :].repeat(head_num, 1, 1)).reshape(
        -1, concept_positions[0].sum())


def fmn_attention_loss(attn_probs: list[torch.Tensor], concept_positions: torch.Tensor) -> torch.Tensor:
    """The attention re-steering loss: torch.cat([select(P_l) for every attn2 layer l]).norm()
    (AttnController.loss, src/train_attn.py lines 284-285, with lines 276-281, commit a4a81e82). The L2 norm
    of all concept-position probabilities, not squared, not averaged."""
    return torch.cat([fmn_select(p, concept_positions) for p in attn_probs]).norm()


class FMNRecorder:
    """AttnController + MyCrossAttnProcessor (src/train_attn.py lines 272-327, commit a4a81e82) for a diffusers
    UNet: `install(unet)` replaces the processor of every module whose name ends in 'attn2'; each forward appends
    that layer's attention probabilities to `self.attn_probs`. The processor is the reference's: plain attention
    through attn.prepare_attention_mask / head_to_batch_dim / get_attention_scores, no norm_cross, group norm or
    residual (SD's attn2 has none; neither has the kit's tiny UNet)."""

    def __init__(self):
        self.attn_probs, self.logs = [], []

    def install(self, unet) -> int:
        count = 0
        for n, m in unet.named_modules():
            if n.endswith("attn2"):
                m.set_processor(_FMNProcessor(self, n))
                count += 1
        return count

    def loss(self, concept_positions: torch.Tensor) -> torch.Tensor:
        return fmn_attention_loss(self.attn_probs, concept_positions)

    def zero_attn_probs(self):
        self.attn_probs, self.logs = [], []


class _FMNProcessor:
    def __init__(self, recorder: FMNRecorder, module_name: str):
        self.recorder, self.module_name = recorder, module_name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        batch_size, sequence_length, _ = hidden_states.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size=batch_size)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        encoder_hidden_states = encoder_hidden_states if encoder_hidden_states is not None else hidden_states
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        attention_probs = attn.get_attention_scores(query, key, attention_mask)
        self.recorder.attn_probs.append(attention_probs)
        self.recorder.logs.append(self.module_name)
        hidden_states = attn.batch_to_head_dim(torch.bmm(attention_probs, value))
        hidden_states = attn.to_out[0](hidden_states)
        return attn.to_out[1](hidden_states)
