"""An in-process suite spread over processes (`eval.workers=N`): each process loads the model and answers a
share of the rows; the answers come back in order and are scored once, in this process.

    invoke eval model=gemma3_270m eval=qa eval.path=FILE eval.workers=2

On GPUs worker i uses GPU i (round robin when there are more workers than GPUs); on CPU the cores are split
between the workers. Rows are sorted by length and dealt out a whole batch at a time, so each worker runs
exactly the batches one process would have run: the same padding, the same answers, the same scores.
"""

# Lazy imports: torch, lm_eval (inside the functions that need them).

import multiprocessing
import os
import queue
import traceback
from collections.abc import Sequence

import jinja2
from omegaconf import DictConfig, OmegaConf

from onestop.core.errors import OnestopError
from onestop.evaluation.generation import generate_greedy, in_process_lm, length_order, stop_token_ids
from onestop.evaluation.targets import Target, device, load_target_model, load_target_tokenizer

POLL_SECONDS = 2.0  # how often a wait for answers checks that every worker is still alive


def deal(order: Sequence[int], batch_size: int, workers: int) -> list[list[int]]:
    """Consecutive batches of `order` dealt round robin: worker w gets batches w, w + workers, ..."""
    shares: list[list[int]] = [[] for _ in range(workers)]
    for number, start in enumerate(range(0, len(order), batch_size)):
        shares[number % workers] += order[start : start + batch_size]
    return shares


def cpu_threads(workers: int) -> int:
    """Each worker's share of the cores this process may use."""
    return max(1, len(os.sched_getaffinity(0)) // workers)


class WorkerPool:
    """`workers` processes with the target's model loaded, answering shares of a list of requests.

    Use it as a context manager: the processes are stopped on leaving it, also on an error.
    """

    def __init__(self, cfg: DictConfig, target: Target, workers: int, stop_strings: Sequence[str] = ()):
        context = multiprocessing.get_context("spawn")  # fork would copy torch's threads and locks
        settings = {
            "cfg": OmegaConf.to_container(OmegaConf.masked_copy(cfg, ["model", "hardware", "eval"]), resolve=True),
            "target": {
                "kind": target.kind,
                "identity": target.identity,
                "run_config": OmegaConf.to_container(target.run_config, resolve=True) if target.run_config else None,
            },
            "workers": workers,
            "stop_strings": list(stop_strings),
        }
        self.batch_size = cfg.eval.batch_size
        self.answers = context.Queue()
        self.inboxes = [context.Queue() for _ in range(workers)]
        self.processes = [
            context.Process(target=serve, args=(rank, settings, inbox, self.answers), daemon=True)
            for rank, inbox in enumerate(self.inboxes)
        ]
        for process in self.processes:
            process.start()
        self.parameter_count = self._collect(range(workers))[0]

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for inbox in self.inboxes:
            inbox.put(None)
        for process in self.processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()

    def run(self, method: str, items: list, lengths: Sequence[int], texts: Sequence[str], **options) -> list:
        """Each worker's `method` on its share of `items` (sorted by `lengths` then `texts`, dealt a batch at a
        time), the answers back in the order of `items`."""
        shares = deal(length_order(lengths, texts), self.batch_size, len(self.processes))
        busy = []
        for rank, share in enumerate(shares):
            if share:
                self.inboxes[rank].put((method, [items[i] for i in share], options))
                busy.append(rank)
        answers = self._collect(busy)
        merged: list = [None] * len(items)
        for rank in busy:
            for index, answer in zip(shares[rank], answers[rank], strict=True):
                merged[index] = answer
        return merged

    def _collect(self, ranks) -> dict:
        """One answer from each of `ranks`; a worker's error is raised here, a worker that died is named."""
        waiting, answers = set(ranks), {}
        while waiting:
            try:
                rank, status, payload = self.answers.get(timeout=POLL_SECONDS)
            except queue.Empty:
                for rank in sorted(waiting):
                    process = self.processes[rank]
                    if not process.is_alive():
                        raise OnestopError(
                            f"eval.workers={len(self.processes)}: worker {rank} died (exit code {process.exitcode}); "
                            "out of memory? try fewer workers or a smaller eval.batch_size"
                        ) from None
                continue
            if status == "user error":
                raise OnestopError(payload)
            if status == "error":
                raise RuntimeError(f"evaluation worker {rank} failed:\n{payload}")
            answers[rank] = payload
            waiting.discard(rank)
        return answers


def serve(rank: int, settings: dict, inbox, answers) -> None:
    """A worker process: load the target on its device, then answer jobs (method, items, options) until None."""
    import torch

    try:
        cfg = OmegaConf.create(settings["cfg"])
        given = settings["target"]
        run_config = OmegaConf.create(given["run_config"]) if given["run_config"] else None
        target = Target(given["kind"], given["identity"], run_config)
        where = device(cfg)
        if where == "cuda":
            where = f"cuda:{rank % torch.cuda.device_count()}"
            torch.cuda.set_device(where)
        else:
            torch.set_num_threads(cpu_threads(settings["workers"]))
        tokenizer = load_target_tokenizer(cfg, target)
        model = load_target_model(cfg, target, where)
        stop_ids = stop_token_ids(model, tokenizer, settings["stop_strings"])
        lm = None
        answers.put((rank, "ready", sum(p.numel() for p in model.parameters())))
    except OnestopError as err:
        answers.put((rank, "user error", str(err)))
        return
    except Exception:
        answers.put((rank, "error", traceback.format_exc()))
        return
    while (job := inbox.get()) is not None:
        method, items, options = job
        try:
            if method == "generate_greedy":
                result = generate_greedy(model, tokenizer, items, stop_ids=stop_ids, **options)
            else:  # an lm-eval request type: generate_until, loglikelihood, loglikelihood_rolling
                from lm_eval.api.instance import Instance

                lm = lm or in_process_lm(model, tokenizer, cfg.eval.batch_size, settings["stop_strings"])
                requests = [Instance(method, {}, tuple(args), index) for index, args in enumerate(items)]
                result = getattr(lm, method)(requests, disable_tqdm=True)
            answers.put((rank, "done", result))
        except OnestopError as err:
            answers.put((rank, "user error", str(err)))
        except Exception:
            answers.put((rank, "error", traceback.format_exc()))


def pooled_lm(pool: WorkerPool, tokenizer):
    """An lm-eval model whose requests the pool's workers answer; prompts are formatted here, with `tokenizer`."""
    from lm_eval.api.model import LM

    def token_count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    class PooledLM(LM):
        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            contexts = [r.args[0] for r in requests]
            return pool.run("generate_until", [r.args for r in requests], [token_count(c) for c in contexts], contexts)

        def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
            texts = [r.args[0] + r.args[1] for r in requests]
            return pool.run("loglikelihood", [r.args for r in requests], [token_count(t) for t in texts], texts)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
            texts = [r.args[0] for r in requests]
            return pool.run("loglikelihood_rolling", [r.args for r in requests], [token_count(t) for t in texts], texts)

        @property
        def tokenizer_name(self) -> str:
            return tokenizer.name_or_path.replace("/", "__")

        def chat_template(self, chat_template: bool | str = False) -> str | None:
            return tokenizer.chat_template if chat_template else None

        def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
            options = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
            options["continue_final_message"] = not add_generation_prompt
            try:
                return tokenizer.apply_chat_template(chat_history, **options)
            except jinja2.exceptions.TemplateError:  # as lm-eval's hf model: a template without a system role
                return tokenizer.apply_chat_template([m for m in chat_history if m["role"] != "system"], **options)

    return PooledLM()
