"""Near-duplicates: MinHash-LSH (datasketch) over word shingles, within the data and against the evaluation sets.

Each record's text becomes the set of its `shingle`-word runs (lower-cased; a CJK character is a word); two
records whose sets overlap by `threshold` or more (Jaccard similarity, estimated from `num_perm` hashes) are
near-duplicates, and the later one is removed. LSH only proposes candidates: each is confirmed by the
estimated similarity before anything is removed. A training record whose prompt is a near-duplicate of an
evaluation prompt (the validation file, data.contamination.eval_paths) is removed too.
"""

# Lazy imports: datasketch (it imports scipy: a second at start-up, paid only when the step runs).

import dataclasses
import zlib
from dataclasses import dataclass
from importlib.metadata import version

import numpy as np

from onestop.data.curate.steps import CHUNK, Context, Excerpt, Step, StepConfigError, Tally, in_chunks
from onestop.data.curate.text import full_text, prompt_text, snippet, words


@dataclass
class NearDuplicates(Step):
    name = "near_duplicates"

    threshold: float = 0.7
    """Jaccard similarity of two records' shingle sets from which the later record is removed. One word edited
    in a 40-word record leaves 0.78 (five-word shingles); 0.8 is usual for web pages, which are longer."""
    shingle: int = 5
    """Words per shingle: shorter shingles find looser paraphrases and more false matches."""
    num_perm: int = 128
    """Hash functions per signature: more estimate the similarity more exactly, slower, more memory."""
    against_eval: bool = True
    """Also remove training records whose prompt near-duplicates an evaluation prompt."""

    def __post_init__(self):
        if not 0 < self.threshold <= 1:
            raise StepConfigError("threshold", f"expected a similarity in (0, 1], got {self.threshold}")
        if self.shingle < 1:
            raise StepConfigError("shingle", f"expected a positive number of words, got {self.shingle}")
        if self.num_perm < 16:
            raise StepConfigError("num_perm", f"expected at least 16 hash functions, got {self.num_perm}")

    def fingerprint(self) -> list[str]:
        return [f"datasketch {version('datasketch')}"]

    def run(self, per_source: list[list[dict]], context: Context, tally: Tally) -> list[list[dict]]:
        from datasketch import MinHash, MinHashLSH

        scheme = self.template().scheme

        def minhash(values: np.ndarray):
            return MinHash(self.num_perm, hashvalues=values, scheme=scheme)

        evaluation = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)
        eval_owner, eval_text = {}, {}
        if self.against_eval:
            for name, prompts in context.eval_sets.items():
                for index, values in enumerate(self.signatures(prompts)):
                    if values is not None:
                        key = f"{name}#{index}"
                        evaluation.insert(key, minhash(values), check_duplication=False)
                        eval_owner[key], eval_text[key] = values, (name, prompts[index])
        check_eval = self.against_eval and bool(eval_owner)
        signer = self if check_eval else dataclasses.replace(self, against_eval=False)  # no prompt signatures

        seen = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)
        kept_hashes: dict[int, np.ndarray] = {}  # the signatures of kept records, to confirm LSH's candidates
        kept_examples: dict[int, dict] = {}  # the kept records themselves (no copy), for the report's excerpts
        result, key = [], 0
        for source, examples in zip(context.sources, per_source, strict=True):
            survivors = []
            chunks = [examples[start : start + CHUNK] for start in range(0, len(examples), CHUNK)]
            signed = (pair for chunk in in_chunks(signer, _signed, chunks, context.processes) for pair in chunk)
            for example, (text_values, prompt_values) in zip(examples, signed, strict=True):
                if check_eval and prompt_values is not None:
                    match = self._confirmed(prompt_values, evaluation.query(minhash(prompt_values)), eval_owner)
                    if match:
                        name, eval_prompt = eval_text[match]
                        excerpt = _pair(prompt_text(example), eval_prompt)
                        tally.count(source, "removed", f"near-duplicate of an evaluation prompt ({name})", excerpt)
                        continue
                if text_values is None:
                    tally.count(source, "kept")
                    survivors.append(example)
                    continue
                signature = minhash(text_values)
                match = self._confirmed(text_values, seen.query(signature), kept_hashes)
                if match is not None:
                    excerpt = _pair(full_text(example), full_text(kept_examples[match]))
                    tally.count(source, "removed", "near-duplicate of an earlier record", excerpt)
                    continue
                key += 1
                seen.insert(key, signature, check_duplication=False)
                kept_hashes[key], kept_examples[key] = text_values, example
                tally.count(source, "kept")
                survivors.append(example)
            result.append(survivors)
        return result

    def template(self):
        """The MinHash whose hash permutations every signature uses (the same in every process: seed 1)."""
        from datasketch import MinHash

        if getattr(self, "_template", None) is None:
            self._template = MinHash(self.num_perm, seed=1, hashfunc=zlib.crc32)  # crc32: a C call, 3x sha1's speed
        return self._template

    def signatures(self, texts: list[str]) -> list[np.ndarray | None]:
        """Each text's MinHash values over its shingles; None for a text without words."""
        from datasketch import MinHash

        template, values = self.template(), []
        for text in texts:
            shingles = self.shingles(text)
            if not shingles:
                values.append(None)
                continue
            signature = MinHash(
                self.num_perm, hashfunc=zlib.crc32, permutations=template.permutations, scheme=template.scheme
            )
            signature.update_batch([s.encode() for s in shingles])
            values.append(signature.hashvalues)
        return values

    def shingles(self, text: str) -> set[str]:
        tokens = [w.lower() for w in words(text)]
        if len(tokens) <= self.shingle:
            return {" ".join(tokens)} if tokens else set()
        return {" ".join(tokens[i : i + self.shingle]) for i in range(len(tokens) - self.shingle + 1)}

    def _confirmed(self, values: np.ndarray, candidates: list, hashes: dict):
        """The first candidate whose estimated similarity reaches the threshold, or None."""
        for candidate in candidates:
            if np.mean(hashes[candidate] == values) >= self.threshold:
                return candidate
        return None


def _pair(text: str, similar: str) -> Excerpt:
    """The report's excerpt of a removed record and of the one it copies, made only if the report keeps it."""
    return lambda: {**snippet(text), "similar_to": snippet(similar)["text"]}


def _signed(step: NearDuplicates, examples: list[dict]) -> list[tuple]:
    """(the MinHash values of each example's text, of its prompt): a chunk's work, in any process."""
    texts = step.signatures([full_text(e) for e in examples])
    prompts = step.signatures([prompt_text(e) for e in examples]) if step.against_eval else [None] * len(examples)
    return list(zip(texts, prompts, strict=True))
