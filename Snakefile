# The pipeline lives in workflow/Snakefile (its rule `all` stays the default target).
workflow.include("workflow/Snakefile", overwrite_default_target=True)
