"""Prediction: from typed prompts to label maps.

    prompts    ObjectPrompt, PromptNumbers: what to segment, checked before any model work
    segmenter  Segmenter: set_image / set_features / predict (SAM-like, one image at a time)
    auto       AutoSegmenter: prompt-free classes, calibrated offsets, the presence gate
    volume     2-D images and 3-D volumes slice by slice: segment_image / segment_volume
    pipeline   predict_file(input, output, objects, PredictOptions): files in, files out
    propagation  one object through a volume from a prompt on its key slice
    cases      the cases of a folder (nnU-Net names) and their prompts file
    folder     predict_folder: every case, sharded over torchrun's ranks

Nothing is imported here, so that `segmote.predict.prompts` stays free of torch (the CLI
parses prompts with it before any model is needed).
"""
