"""User-facing errors: one clear message naming the problem and where it is, never a traceback."""


class AthanorError(Exception):
    """A problem the user can fix (bad campaign file, missing dataset, unknown sample, ...)."""


class SpecError(AthanorError):
    """A campaign file that does not validate; carries every problem found, each with its place."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        listing = "\n".join(f"  {p}" for p in problems)
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{source}: {len(problems)} {noun}:\n{listing}")
