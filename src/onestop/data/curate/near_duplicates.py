"""Near-duplicates: MinHash-LSH (datasketch) over word shingles, within the data and against the evaluation sets.

Each record's text becomes the set of its `shingle`-word runs (lower-cased; a CJK character is a word); two
records whose sets overlap by `threshold` or more (Jaccard similarity, estimated from `num_perm` hashes) are
near-duplicates, and the later one is removed. LSH only proposes candidates: each is confirmed by the
estimated similarity before anything is removed. A training record whose prompt is a near-duplicate of an
evaluation prompt (the validation file, data.contamination.eval_paths) is removed too.
"""

# Lazy imports: datasketch (only when the step runs).

import zlib
from dataclasses import dataclass

import numpy as np

from onestop.data.curate.steps import Context, Excerpt, Step, StepConfigError, Tally
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
        from importlib.metadata import version

        return [f"datasketch {version('datasketch')}"]

    def run(self, per_source: list[list[dict]], context: Context, tally: Tally) -> list[list[dict]]:
        from datasketch import MinHash, MinHashLSH

        template = MinHash(num_perm=self.num_perm, seed=1, hashfunc=zlib.crc32)  # crc32: a C call, 3x sha1's speed

        def signature(text: str):
            shingles = self.shingles(text)
            if not shingles:
                return None
            minhash = MinHash(
                self.num_perm, hashfunc=zlib.crc32, permutations=template.permutations, scheme=template.scheme
            )
            minhash.update_batch([s.encode() for s in shingles])
            return minhash

        evaluation = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)
        eval_owner, eval_text = {}, {}
        if self.against_eval:
            for name, prompts in context.eval_sets.items():
                for index, prompt in enumerate(prompts):
                    minhash = signature(prompt)
                    if minhash is not None:
                        key = f"{name}#{index}"
                        evaluation.insert(key, minhash, check_duplication=False)
                        eval_owner[key], eval_text[key] = minhash.hashvalues, (name, prompt)

        seen = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)
        kept_hashes: dict[int, np.ndarray] = {}  # the signatures of kept records, to confirm LSH's candidates
        kept_examples: dict[int, dict] = {}  # the kept records themselves (no copy), for the report's excerpts
        result, key = [], 0
        for source, examples in zip(context.sources, per_source, strict=True):
            survivors = []
            for example in examples:
                text = full_text(example)
                if self.against_eval and eval_owner:
                    prompt = signature(prompt_text(example))
                    match = prompt and self._confirmed(prompt, evaluation.query(prompt), eval_owner)
                    if match:
                        name, eval_prompt = eval_text[match]
                        excerpt = _pair(prompt_text(example), eval_prompt)
                        tally.count(source, "removed", f"near-duplicate of an evaluation prompt ({name})", excerpt)
                        continue
                minhash = signature(text)
                if minhash is None:
                    tally.count(source, "kept")
                    survivors.append(example)
                    continue
                match = self._confirmed(minhash, seen.query(minhash), kept_hashes)
                if match is not None:
                    excerpt = _pair(text, full_text(kept_examples[match]))
                    tally.count(source, "removed", "near-duplicate of an earlier record", excerpt)
                    continue
                key += 1
                seen.insert(key, minhash, check_duplication=False)
                kept_hashes[key] = minhash.hashvalues
                kept_examples[key] = example
                tally.count(source, "kept")
                survivors.append(example)
            result.append(survivors)
        return result

    def shingles(self, text: str) -> set[str]:
        tokens = [w.lower() for w in words(text)]
        if len(tokens) <= self.shingle:
            return {" ".join(tokens)} if tokens else set()
        return {" ".join(tokens[i : i + self.shingle]) for i in range(len(tokens) - self.shingle + 1)}

    def _confirmed(self, minhash, candidates: list, hashes: dict):
        """The first candidate whose estimated similarity reaches the threshold, or None."""
        for candidate in candidates:
            if np.mean(hashes[candidate] == minhash.hashvalues) >= self.threshold:
                return candidate
        return None


def _pair(text: str, similar: str) -> Excerpt:
    """The report's excerpt of a removed record and of the one it copies, made only if the report keeps it."""
    return lambda: {**snippet(text), "similar_to": snippet(similar)["text"]}
