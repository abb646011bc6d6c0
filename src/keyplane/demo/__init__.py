"""The paper's proof of concept as a runnable demo: scenario, live view, Fig. 4 timeline."""
