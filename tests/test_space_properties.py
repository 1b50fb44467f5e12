"""Property-based: any space either loads and samples valid configs, or fails with our one-line UserError."""

import optuna
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search.config import FIELD_TYPES, TrialConfig
from search.errors import UserError
from search.models.backbones import BACKBONES
from search.space import CHOICES, parse_space, sample

optuna.logging.set_verbosity(optuna.logging.ERROR)

junk = st.one_of(st.none(), st.booleans(), st.integers(-5, 500), st.floats(allow_nan=True, allow_infinity=True),
                 st.text(max_size=8), st.lists(st.integers(0, 3), max_size=3))


def value_for(name):
    """Plausible values of a field: often valid, sometimes not."""
    kind = FIELD_TYPES[name]
    if name in CHOICES:
        return st.sampled_from(list(CHOICES[name]) + ["nonsense"])
    if kind is bool:
        return st.booleans()
    if kind is int:
        return st.integers(-2, 300)
    if kind is float:
        return st.floats(-0.5, 1.5, allow_nan=False)
    if kind is tuple:
        return st.lists(st.floats(0, 1), min_size=2, max_size=4)
    return st.sampled_from(["builtin:shapes", "none", "builtin"])


@st.composite
def param_spec(draw, name):
    value = value_for(name)
    form = draw(st.sampled_from(["fixed", "choices", "range", "junk"]))
    if form == "fixed":
        return draw(value)
    if form == "choices":
        return {"choices": draw(st.lists(value, min_size=0, max_size=3))}
    if form == "range":
        spec = {"low": draw(value), "high": draw(value)}
        if draw(st.booleans()):
            spec["log"] = draw(st.one_of(st.booleans(), junk))
        return spec
    return draw(junk)


@st.composite
def spaces(draw):
    names = draw(st.lists(st.sampled_from(list(FIELD_TYPES) + ["learing_rate"]), max_size=6, unique=True))
    params = {name: draw(param_spec(name)) for name in names if name != "learing_rate"}
    if "learing_rate" in names:
        params["learing_rate"] = 0.1
    params.setdefault("dataset", "builtin:shapes")
    params["weights"] = "none"  # no weights files in this test
    raw = {"params": params}
    if draw(st.booleans()):
        raw["study"] = {"pruner": {"type": draw(st.sampled_from(["median", "hyperband", "nope"]))}}
    return raw


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spaces())
def test_a_space_loads_and_samples_valid_configs_or_fails_with_user_error(raw):
    try:
        space = parse_space(raw, "p.yaml")
    except UserError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("p.yaml: ")
        return
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(3):
        trial = study.ask()
        cfg = sample(trial, space)
        study.tell(trial, 0.5)
        assert isinstance(cfg, TrialConfig)
        for name, param in space.params.items():
            if name in trial.params:
                value = getattr(cfg, name)
                if param.choices is not None:
                    assert value in param.choices
                else:
                    assert param.low <= value <= param.high
        # the resolved config is itself a valid space with every param fixed (what best.yaml is)
        fixed = {k: v for k, v in cfg.to_dict().items()}
        assert sample(optuna.trial.FixedTrial({}), parse_space({"params": fixed})) == cfg
        assert cfg.image_size >= BACKBONES[cfg.backbone].min_size
