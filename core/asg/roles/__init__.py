"""The three roles — Proposer (Ask), Solver (Solve), Generator (Generate) — over the backbone protocol.

Prompts and output formats come from ``backbone.prompt_templates`` (:class:`RoleTemplates`); parsing,
normalisation and checks are pure functions; the role classes only batch calls to the backbone.
"""

from asg.roles.answers import (
    Extraction,
    ParsedAnswer,
    extract_answer,
    normalize,
    parse_answer,
    question_type,
    soft_match,
    typed_label,
)
from asg.roles.certificate import Certificate, CertificateConfig, ObjectiveCheck, certify, check_objective
from asg.roles.generator import GateConfig, GateResult, Generator, GeneratorConfig, gate_specs, qa_agreement
from asg.roles.proposer import Candidate, Proposal, ProposalParse, Proposer, ProposerConfig, SpecProposal, parse_candidates
from asg.roles.solver import (
    PPSLadder,
    Solver,
    SolverAnswers,
    SolverConfig,
    SolverSample,
    answer_token_span,
    pps_quantile,
)
from asg.roles.spec import QAPair, Spec, compose_prompt, parse_spec, spec_quality
from asg.roles.templates import RoleTemplates

__all__ = [
    "Candidate", "Certificate", "CertificateConfig", "Extraction", "GateConfig", "GateResult", "Generator",
    "GeneratorConfig", "ObjectiveCheck", "PPSLadder", "ParsedAnswer", "Proposal", "ProposalParse", "Proposer",
    "ProposerConfig", "QAPair", "RoleTemplates", "Solver", "SolverAnswers", "SolverConfig", "SolverSample",
    "Spec", "SpecProposal", "answer_token_span", "certify", "check_objective", "compose_prompt",
    "extract_answer", "gate_specs", "normalize", "parse_answer", "parse_candidates", "parse_spec",
    "pps_quantile", "qa_agreement", "question_type", "soft_match", "spec_quality", "typed_label",
]
