"""Stage 4, measure: scores with confidence intervals (`scores`), predictions (`predict`), the shortcut
tests (`shortcut`: flip rates, energy in the box), typed results (`results`), figure examples (`examples`),
the sanity check (`sanity`), deletion/insertion (`faithfulness`), the method x layer comparison
(`comparison`), the audit (`spray`) and studies across seeds (`aggregate`). Pure: tensors in, results out."""
