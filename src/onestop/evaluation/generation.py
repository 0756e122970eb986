"""Greedy generation for evaluation: prompts batched by length with left padding, each row ending at the chat
template's end-of-turn token, an EOS token or one of the suite's stop strings, and a batch ending as soon as
every row in it has.

    texts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in prompts]
    tokens = generate_greedy(model, tokenizer, texts, stop_ids=stop_token_ids(model, tokenizer, ["<end_of_turn>"]))

`InProcessLM` gives lm-eval's `hf` model the same stopping rules, so `generate_until` suites (qa, gsm8k, the
demo) stop each row where its answer ends instead of where the whole batch happens to agree. Answers are the
same as one prompt at a time (tested): only when the work stops changes.
"""

# Lazy imports: torch, transformers, lm_eval (inside the functions that need them).

from collections.abc import Callable, Sequence


def end_of_turn(tokenizer) -> list[str]:
    """The text the chat template closes an assistant turn with (`<end_of_turn>`, `<|im_end|>`): a stop string."""
    if not getattr(tokenizer, "chat_template", None):
        return []
    probe = [{"role": "user", "content": "?"}, {"role": "assistant", "content": "ANSWER"}]
    text = tokenizer.apply_chat_template(probe, tokenize=False)
    closing = text.split("ANSWER", 1)[1].strip()
    return [closing] if closing else []


def stop_token_ids(model, tokenizer, stop_strings: Sequence[str] = ()) -> list[int]:
    """Every token that ends an answer: the generation config's EOS ids, the tokenizer's, and each stop string
    that is one token (`<|im_end|>`, `<end_of_turn>`)."""
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured]) | {tokenizer.eos_token_id}
    for text in stop_strings:
        encoded = tokenizer.encode(text, add_special_tokens=False) if text else []
        if len(encoded) == 1:
            ids.add(encoded[0])
    return sorted(i for i in ids if i is not None)


def text_stops(tokenizer, stop_strings: Sequence[str], stop_ids: Sequence[int]) -> list[str]:
    """The stop strings a token id cannot catch (several tokens, or words like "\\n\\nQuestion:")."""
    single = {tokenizer.decode([i], skip_special_tokens=False) for i in stop_ids}
    return [s for s in stop_strings if s and s not in single]


def stop_on_text(tokenizer, stop_strings: Sequence[str], prompt_length: int):
    """A stopping criterion that ends each row once its answer so far (decoded as the caller will decode it,
    special tokens skipped) contains one of `stop_strings`; rows are ended one by one, so a batch ends when its
    last row does. lm-eval's own criterion waits until every row has met the *same* string."""
    from transformers import StoppingCriteria

    class StopOnText(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            import torch

            done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            for row, tokens in enumerate(input_ids[:, prompt_length:].tolist()):
                text = tokenizer.decode(tokens, skip_special_tokens=True)
                done[row] = any(stop in text for stop in stop_strings)
            return done

    return StopOnText()


def length_order(lengths: Sequence[int], texts: Sequence[str]) -> list[int]:
    """Indices longest first (ties by text): neighbours in a batch need little padding, and the same prompts
    always fall into the same batches, however they are split between processes."""
    return sorted(range(len(texts)), key=lambda i: (-lengths[i], texts[i]))


def generate_greedy(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    stop_ids: Sequence[int],
    stop_strings: Sequence[str] = (),
    on_batch: Callable[[int], object] | None = None,
) -> list[list[int]]:
    """Greedy continuations of already formatted prompts, in the order given: each row's new tokens up to and
    including its first stop token (or through the token that completed a stop string).

    Prompts go longest first in batches of `batch_size`, left-padded; a row that stops is padded from then on,
    and the batch stops when every row has, not at `max_new_tokens`. `on_batch(rows)` is called after each batch
    (a progress bar's `update`).
    """
    import torch
    from transformers import StoppingCriteriaList

    was_training, use_cache = model.training, model.config.use_cache
    model.eval()
    model.config.use_cache = True
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    stops, strings = set(stop_ids), text_stops(tokenizer, stop_strings, stop_ids)
    lengths = [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    order = length_order(lengths, texts)
    results: list[list[int]] = [[] for _ in texts]
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            encoded = tokenizer(
                [texts[i] for i in batch], add_special_tokens=False, padding=True, return_tensors="pt"
            ).to(model.device)
            width = encoded["input_ids"].shape[1]
            criteria = StoppingCriteriaList([stop_on_text(tokenizer, strings, width)] if strings else [])
            with torch.no_grad():
                output = model.generate(
                    **encoded,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=list(stop_ids),
                    pad_token_id=tokenizer.pad_token_id,
                    stopping_criteria=criteria,
                )
            for index, tokens in zip(batch, output[:, width:].tolist(), strict=True):
                results[index] = _through_first_stop(tokens, stops, tokenizer, strings)
            if on_batch:
                on_batch(len(batch))
    finally:
        tokenizer.padding_side = side
        model.config.use_cache = use_cache
        model.train(was_training)
    return results


def _through_first_stop(tokens: list[int], stops: set[int], tokenizer, strings: list[str]) -> list[int]:
    """A row's tokens through its first stop token; the padding after a row that stopped early is dropped."""
    for position, token in enumerate(tokens):
        if token in stops:
            return tokens[: position + 1]
    if strings:  # stopped on text: find the token that completed the stop string
        for end in range(1, len(tokens) + 1):
            if any(s in tokenizer.decode(tokens[:end], skip_special_tokens=True) for s in strings):
                return tokens[:end]
    return tokens


def in_process_lm(model, tokenizer, batch_size: int, stop_strings: Sequence[str] = ()):
    """lm-eval's `hf` model over an already loaded `model`, stopping as `generate_greedy` does: at the EOS and
    end-of-turn tokens (`stop_strings` that are one token) for every row, at the suite's other stop strings row
    by row."""
    from lm_eval.models.huggingface import HFLM

    ids = stop_token_ids(model, tokenizer, stop_strings)

    class InProcessLM(HFLM):
        def _model_generate(self, context, max_length: int, stop: list[str], **generation_kwargs):
            from transformers import StoppingCriteriaList

            # lm-eval's reading of a request's kwargs: no temperature (or 0) and no do_sample means greedy
            temperature = generation_kwargs.get("temperature", 0.0)
            if temperature == 0.0 and generation_kwargs.get("do_sample") is None:
                generation_kwargs["do_sample"] = False
            if temperature == 0.0 and generation_kwargs.get("do_sample") is False:
                generation_kwargs.pop("temperature", None)
            strings = text_stops(self.tokenizer, stop, ids)
            criteria = [stop_on_text(self.tokenizer, strings, context.shape[1])] if strings else []
            return self.model.generate(
                input_ids=context,
                max_length=max_length,
                stopping_criteria=StoppingCriteriaList(criteria),
                eos_token_id=ids,
                pad_token_id=self.tokenizer.pad_token_id,
                use_cache=True,
                **generation_kwargs,
            )

    return InProcessLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
