"""Benchmarks, one module each. Speed and quality targets live here and in docs/benchmarks.md, never in unit tests.

invoke bench.train         # training throughput and memory per precision and variant (throughput.py)
invoke bench.trainers      # the demo recipe: onestop vs transformers Trainer (trainers.py)
invoke bench.agents        # agent loops compared on one served model (agents.py)
invoke bench.estimate      # estimated vs measured peak memory and step time (estimate.py)
invoke bench.load          # load and abuse test of a deployment (load.py)
invoke bench.serve         # deployment vs backend vs sequential generate (serve.py)
invoke bench.startup       # invoke --list, --cfg job and a first training step (startup.py)
invoke bench.data          # data.prepare as rows grow (data.py)
invoke bench.eval          # evaluation speed (eval.py)
invoke bench.gpu           # every GPU path in one run (gpu.py; wheels.py for a machine without internet)

What every benchmark writes and prints (tables, JSON, the docs' tables) is in output.py.
"""
