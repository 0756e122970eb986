"""`invoke ui`: a browser window onto runs, new runs, evaluations, deployments and a chat playground.

The page holds no settings and no logic of its own: it reads runs through `RunDir`, and every action it
takes is the `invoke` command it shows.
"""
