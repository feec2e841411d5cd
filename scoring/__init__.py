"""The domain, pure and typed; it never imports ``streams``.

    rules       the rules file: schema, YAML loading, every problem at once
    conditions  ``if`` conditions compiled once (RE2 for ``matches``)
    events      one event: parsing and validation, with a reason per refusal
    decay       half-life decay and the cooling crossing time
    engine      LeadState and ``apply``: the one definition of the semantics
    history     what each change of a lead was, for "why is it hot?"
    views       a lead as people see it (API, CLI, dashboard)
    offline     ``leadscore score``: a file of events through an in-memory store
    preview     ``leadscore rules preview``: two rulesets compared and backtested
    model       the conversion model as served: features at an instant, p_convert
    training    ``leadscore model train``: examples, time split, fit, calibration
    suggest     ``leadscore model suggest``: learned weights back into points
    store       where lead state lives: Redis (the worker) or memory (offline, tests)
    errors      the exception family

docs/architecture.md draws the path of one event through these.
"""

__all__ = ["conditions", "decay", "engine", "errors", "events", "history", "model", "offline",
           "preview", "rules", "store", "suggest", "training", "views"]
