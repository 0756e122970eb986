"""The fields of a config schema with the docstring written under each, for forms and help.

from onestop.config.fields import field_docs
field_docs(TrainerConfig)["max_steps"]   # 'Optimizer steps to run; -1 means run `max_epochs`.'
"""

import ast
import dataclasses
import inspect
import textwrap
from functools import cache


@cache
def field_docs(schema: type) -> dict[str, str]:
    """{field: the string literal right under it in the class body} of a dataclass and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed([k for k in schema.__mro__ if dataclasses.is_dataclass(k)]):
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body
        for statement, following in zip(body, body[1:], strict=False):
            documented = (
                isinstance(statement, ast.AnnAssign)
                and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            )
            if documented:
                docs[statement.target.id] = " ".join(following.value.value.split())
    return docs
