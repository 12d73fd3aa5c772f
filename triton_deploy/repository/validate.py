"""Check configs the way Triton will: parse them with Triton's own ``ModelConfig`` protobuf, then cross-check every
ensemble against its members (tensor names, dtypes, dims, batch sizes). Nothing is written until this passes."""

from __future__ import annotations

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from triton_deploy.errors import RepositoryError


def parse_config(text: str, where: str) -> mc.ModelConfig:
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise RepositoryError(f"{where}: Triton's ModelConfig schema rejects it: {exc}") from None
    return config


def _signature(tensor) -> tuple[int, tuple[int, ...]]:
    return tensor.data_type, tuple(tensor.dims)


def check_models(configs: dict[str, mc.ModelConfig]) -> None:
    """Cross-check each ensemble in ``configs``; collect every problem, then raise them together."""
    problems: list[str] = []
    for name, config in configs.items():
        if config.name != name:
            problems.append(f"{name}: config names the model {config.name!r}")
        if config.platform == "ensemble":
            problems.extend(_check_ensemble(config, configs))
    if problems:
        raise RepositoryError("inconsistent model repository: " + "; ".join(problems))


def _check_ensemble(ensemble: mc.ModelConfig, configs: dict[str, mc.ModelConfig]) -> list[str]:
    problems: list[str] = []
    where = f"ensemble {ensemble.name!r}"
    # Ensemble tensor name -> (dtype, dims), seeded with the ensemble's inputs, grown by each step's outputs.
    available = {t.name: _signature(t) for t in ensemble.input}
    for index, step in enumerate(ensemble.ensemble_scheduling.step, start=1):
        member = configs.get(step.model_name)
        if member is None:
            problems.append(f"{where} step {index} uses model {step.model_name!r}, which is not in the repository")
            continue
        if member.max_batch_size < ensemble.max_batch_size:
            problems.append(f"{where} has max_batch_size {ensemble.max_batch_size} but member "
                            f"{member.name!r} only {member.max_batch_size}")
        inputs = {t.name: _signature(t) for t in member.input}
        outputs = {t.name: _signature(t) for t in member.output}
        for member_tensor, ensemble_tensor in step.input_map.items():
            if member_tensor not in inputs:
                problems.append(f"{where} maps {ensemble_tensor!r} to input {member_tensor!r}, "
                                f"which {member.name!r} does not have (it has {sorted(inputs)})")
            elif ensemble_tensor not in available:
                problems.append(f"{where} feeds {member.name!r} from {ensemble_tensor!r}, which no earlier step "
                                "produces")
            elif available[ensemble_tensor] != inputs[member_tensor]:
                problems.append(f"{where}: {ensemble_tensor!r} is {_describe(available[ensemble_tensor])} but "
                                f"{member.name!r} input {member_tensor!r} wants {_describe(inputs[member_tensor])}")
        missing = set(inputs) - set(step.input_map)
        if missing:
            problems.append(f"{where} leaves inputs {sorted(missing)} of {member.name!r} unmapped")
        for member_tensor, ensemble_tensor in step.output_map.items():
            if member_tensor not in outputs:
                problems.append(f"{where} reads output {member_tensor!r}, which {member.name!r} does not have "
                                f"(it has {sorted(outputs)})")
            else:
                available[ensemble_tensor] = outputs[member_tensor]
    for tensor in ensemble.output:
        if tensor.name not in available:
            problems.append(f"{where} output {tensor.name!r} is produced by no step")
        elif available[tensor.name] != _signature(tensor):
            problems.append(f"{where} output {tensor.name!r} is declared {_describe(_signature(tensor))} but its "
                            f"step produces {_describe(available[tensor.name])}")
    return problems


def _describe(signature: tuple[int, tuple[int, ...]]) -> str:
    dtype, dims = signature
    return f"{mc.DataType.Name(dtype)} {list(dims)}"
