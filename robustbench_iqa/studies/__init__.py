"""The studies of a run, one module each (see :mod:`robustbench_iqa.studies.base`).

- :mod:`~robustbench_iqa.studies.certify`: certificates, defended and undefended scores, timings;
- :mod:`~robustbench_iqa.studies.audit`: the certificates under attack inside their radius;
- :mod:`~robustbench_iqa.studies.accuracy`: the defended predictions under further seeds;
- :mod:`~robustbench_iqa.studies.stability`: repeated predictions with different seeds;
- :mod:`~robustbench_iqa.studies.beyond`: attacks beyond the certified radius;
- :mod:`~robustbench_iqa.studies.attack`: the rows of ``robustbench-iqa attack --out``.
"""

from robustbench_iqa.studies.base import (
    STUDIES,
    Check,
    Record,
    ReportOptions,
    Row,
    RunData,
    Study,
    StudyOutput,
    Unit,
    get_study,
    list_studies,
    register_study,
)

__all__ = ["STUDIES", "Check", "Record", "ReportOptions", "Row", "RunData", "Study", "StudyOutput", "Unit",
           "get_study", "list_studies", "register_study"]
