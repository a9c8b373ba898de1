"""The paper's findings beyond the score table: fidelity probes, norm and direction analysis, the
magnitude sweep. Library code only; the workflow's rules call it through thin scripts."""
