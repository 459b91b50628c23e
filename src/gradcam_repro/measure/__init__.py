"""Stage 4, measure: scores with confidence intervals (`scores`), predictions (`predict`), the shortcut
tests (`shortcut`: flip rates, energy in the box), the sanity check (`sanity`), deletion/insertion
(`faithfulness`) and the method x layer comparison (`methods`). Pure: tensors in, plain results out."""
