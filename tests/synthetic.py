"""Synthesized objects for the real-archive cases: overlays in high bits, enhanced
multi-frame images, segmentations, odd syntaxes. No patient data; see PS3.3 for the
modules each one imitates.
"""

from __future__ import annotations

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from dcmpress.stack.samples import make_image

MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4")
ENHANCED_CT_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2.1")
WHOLE_SLIDE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.77.1.6")
ENHANCED_MR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4.1")
US_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.6.1")
SEGMENTATION_STORAGE = UID("1.2.840.10008.5.1.4.1.1.66.4")
LABEL_MAP_SEGMENTATION_STORAGE = UID("1.2.840.10008.5.1.4.1.1.66.7")


def overlay_mask(rows: int, cols: int, bit: int, frame: int = 0) -> np.ndarray:
    """A distinct, recognisable plane per bit and frame: a box and a diagonal line."""
    plane = np.zeros((rows, cols), bool)
    top = (3 * bit + 5 * frame) % max(rows - 8, 1)
    plane[top : top + 6, 2 : cols // 2] = True
    diagonal = np.arange(min(rows, cols))
    plane[diagonal, (diagonal + bit) % cols] = True
    return plane


def mr_with_embedded_overlays(
    bits: tuple[int, ...] = (12, 13, 14, 15),
    rows: int = 48,
    cols: int = 40,
    frames: int = 1,
    frames_in_overlay: int | None = None,
) -> tuple[Dataset, dict[int, np.ndarray]]:
    """A 16-bit MR (Bits Stored 12) with overlay planes in high bits of Pixel Data.

    Returns the dataset and, per overlay group, the expected planes (frames, rows, cols).
    Each bit gets its own group (6000, 6002, ...), as old MR consoles wrote them.
    """
    ds = make_image(rows, cols, frames=frames, bits_stored=12, sop_class=MR_IMAGE_STORAGE)
    ds.Modality = "MR"
    words = np.frombuffer(ds.PixelData, "<u2").reshape(frames, rows, cols).copy()
    expected: dict[int, np.ndarray] = {}
    for index, bit in enumerate(bits):
        group = 0x6000 + 2 * index
        count = frames_in_overlay or frames
        planes = np.stack([overlay_mask(rows, cols, bit, frame) for frame in range(count)])
        words[:count] |= planes.astype(np.uint16) << bit
        expected[group] = planes
        ds.add_new(Tag(group, 0x0010), "US", rows)
        ds.add_new(Tag(group, 0x0011), "US", cols)
        ds.add_new(Tag(group, 0x0040), "CS", "G")
        ds.add_new(Tag(group, 0x0050), "SS", [1, 1])
        ds.add_new(Tag(group, 0x0100), "US", 16)
        ds.add_new(Tag(group, 0x0102), "US", bit)
        if frames_in_overlay:
            ds.add_new(Tag(group, 0x0015), "IS", frames_in_overlay)
            ds.add_new(Tag(group, 0x0051), "US", 1)
    ds.PixelData = words.astype("<u2").tobytes()
    return ds, expected


def with_syntax(ds: Dataset, uid: str, implicit: bool = False) -> bytes:
    """``ds`` as a Part 10 file whose file meta names ``uid``, whatever it is.

    pydicom refuses to write transfer syntaxes it does not know; the data set is
    written little endian (explicit VR unless ``implicit``) with that UID in the meta.
    """
    fp = DicomBytesIO()
    fp.write(b"\0" * 128 + b"DICM")
    ds.file_meta.TransferSyntaxUID = uid
    write_file_meta_info(fp, ds.file_meta, enforce_standard=True)
    fp.is_little_endian, fp.is_implicit_VR = True, implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def private_part10(ds: Dataset) -> bytes:
    """``ds`` (private elements, say) as a Part 10 file with standard file meta: a
    readable file that is no storable instance."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    fp = DicomBytesIO()
    dcmwrite(fp, ds, enforce_file_format=True)
    return fp.getvalue()


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _frame_content(number: int) -> Dataset:
    content = Dataset()
    content.FrameAcquisitionNumber = 1
    content.FrameReferenceDateTime = "20260101120000"
    content.FrameAcquisitionDateTime = "20260101120000"
    content.FrameAcquisitionDuration = 100
    content.StackID = "1"
    content.InStackPositionNumber = number
    content.DimensionIndexValues = [1, number]
    return content


def enhanced_ct(frames: int = 3, rows: int = 64, cols: int = 64) -> Dataset:
    """An Enhanced CT Image (PS3.3 A.38) with shared and per-frame functional groups."""
    ds = make_image(rows, cols, frames=frames, bits_stored=12, sop_class=ENHANCED_CT_STORAGE)
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    for keyword in ("RescaleIntercept", "RescaleSlope"):
        delattr(ds, keyword)  # in the Pixel Value Transformation group instead
    _equipment_and_study(ds)
    del ds.Laterality, ds.PatientOrientation  # in the Frame Anatomy group instead
    _enhanced_image(ds)
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 1.0
    _stack_dimensions(ds)

    shared = Dataset()
    frame_type = Dataset()
    frame_type.FrameType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    frame_type.PixelPresentation = "MONOCHROME"
    frame_type.VolumetricProperties = "VOLUME"
    frame_type.VolumeBasedCalculationTechnique = "NONE"
    shared.CTImageFrameTypeSequence = Sequence([frame_type])
    transformation = Dataset()
    transformation.RescaleIntercept, transformation.RescaleSlope = -1024, 1
    transformation.RescaleType = "HU"
    shared.PixelValueTransformationSequence = Sequence([transformation])
    _axial_plane(shared)
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = _stacked_frames(frames)
    return ds


def whole_slide(frames: int = 4, tile: int = 64) -> Dataset:
    """A tiled VL Whole Slide Microscopy image (PS3.3 A.32.8), RGB, 2x2 tiles."""
    ds = make_image(tile, tile, frames=frames, bits_allocated=8, samples=3,
                    sop_class=WHOLE_SLIDE_STORAGE)  # fmt: skip
    ds.Modality = "SM"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.TotalPixelMatrixColumns = ds.TotalPixelMatrixRows = 2 * tile
    ds.TotalPixelMatrixFocalPlanes = 1
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.ImagedVolumeWidth = ds.ImagedVolumeHeight = 1.0
    ds.ImagedVolumeDepth = 0.01
    ds.BurnedInAnnotation = "NO"
    ds.SpecimenLabelInImage = "NO"
    ds.FocusMethod = "AUTO"
    ds.ExtendedDepthOfField = "NO"
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = "20260101", "120000"
    ds.AcquisitionDateTime = "20260101120000"
    shared = Dataset()
    frame_type = Dataset()
    frame_type.FrameType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    shared.WholeSlideMicroscopyImageFrameTypeSequence = Sequence([frame_type])
    measures = Dataset()
    measures.PixelSpacing = [0.0005, 0.0005]
    measures.SliceThickness = 0.01
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    return ds


def segmentation(sop_class: UID = SEGMENTATION_STORAGE, kind: str = "FRACTIONAL") -> Dataset:
    """An 8-bit Segmentation (fractional, or a label map) with one segment."""
    ds = make_image(40, 40, frames=2, bits_allocated=8, sop_class=sop_class)
    ds.Modality = "SEG"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SegmentationType = kind
    if kind == "FRACTIONAL":
        ds.SegmentationFractionalType = "PROBABILITY"
        ds.MaximumFractionalValue = 255
    segment = Dataset()
    segment.SegmentNumber = 1
    segment.SegmentLabel = "synthetic"
    segment.SegmentAlgorithmType = "MANUAL"
    segment.SegmentedPropertyCategoryCodeSequence = Sequence(
        [_code("91723000", "SCT", "Anatomical Structure")]
    )
    segment.SegmentedPropertyTypeCodeSequence = Sequence([_code("10200004", "SCT", "Liver")])
    ds.SegmentSequence = Sequence([segment])
    return ds


def _enhanced_image(ds: Dataset) -> None:
    """The Enhanced image module attributes (PS3.3 C.8.13.1, C.8.15.2...) both enhanced
    builders share: acquisition, presentation, frame of reference, comments."""
    ds.AcquisitionDateTime = "20260101120000"
    ds.AcquisitionNumber = 1
    ds.PresentationLUTShape = "IDENTITY"
    ds.BurnedInAnnotation = "NO"
    ds.ContentQualification = "RESEARCH"
    ds.ImageComments = "synthetic"
    ds.FrameOfReferenceUID = generate_uid()
    ds.PositionReferenceIndicator = ""


def _axial_plane(shared: Dataset) -> None:
    """Shared Pixel Measures and Plane Orientation groups: 0.5 mm axial slices, 1 mm thick."""
    measures = Dataset()
    measures.PixelSpacing = [0.5, 0.5]
    measures.SliceThickness = 1.0
    shared.PixelMeasuresSequence = Sequence([measures])
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PlaneOrientationSequence = Sequence([orientation])


def _stacked_frames(frames: int) -> Sequence:
    """Per-frame groups of a stack: Frame Content and Plane Position, one slice apart."""
    per_frame = []
    for number in range(1, frames + 1):
        item = Dataset()
        item.FrameContentSequence = Sequence([_frame_content(number)])
        position = Dataset()
        position.ImagePositionPatient = [0.0, 0.0, float(number)]
        item.PlanePositionSequence = Sequence([position])
        per_frame.append(item)
    return Sequence(per_frame)


def _stack_dimensions(ds: Dataset) -> None:
    """Multi-frame Dimension module: one organization, indexed by Stack ID and In-Stack
    Position Number, both in the Frame Content Sequence."""
    dimension = Dataset()
    dimension.DimensionOrganizationUID = generate_uid()
    ds.DimensionOrganizationSequence = Sequence([dimension])
    indices = []
    for pointer in (0x00209056, 0x00209057):  # Stack ID, In-Stack Position Number
        index = Dataset()
        index.DimensionOrganizationUID = dimension.DimensionOrganizationUID
        index.DimensionIndexPointer = pointer
        index.FunctionalGroupPointer = 0x00209111  # Frame Content Sequence
        indices.append(index)
    ds.DimensionIndexSequence = Sequence(indices)


def _equipment_and_study(ds: Dataset) -> None:
    """General Study, Series, Equipment and Acquisition attributes every IOD asks for."""
    ds.StudyDate, ds.StudyTime = "20260101", "120000"
    ds.ContentDate, ds.ContentTime = "20260101", "120000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Laterality = ""
    ds.PatientOrientation = ""
    ds.Manufacturer = "dcmpress tests"
    ds.ManufacturerModelName = "synthetic"
    ds.DeviceSerialNumber = "1"
    ds.SoftwareVersions = "1"


def ultrasound(photometric: str = "RGB", rows: int = 64, cols: int = 64, seed: int = 9) -> Dataset:
    """An 8-bit colour Ultrasound Image (PS3.3 A.6) with its US Image module (C.8.5.6).

    ``photometric`` RGB keeps the pattern's samples; YBR_FULL_422 stores them as the
    uncompressed 4:2:2 layout of PS3.3 C.7.6.3.1.2 (Y1 Y2 CB CR per pixel pair, one
    chrominance pair per two pixels, ``cols`` even).
    """
    ds = make_image(rows, cols, bits_allocated=8, samples=3, seed=seed,
                    sop_class=US_IMAGE_STORAGE)  # fmt: skip
    ds.Modality = "US"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL", "0001"]
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    _equipment_and_study(ds)
    if photometric == "YBR_FULL_422":
        rgb = np.frombuffer(ds.PixelData, np.uint8).reshape(rows, cols, 3).astype(float)
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        y = 0.299 * r + 0.587 * g + 0.114 * b  # PS3.3 C.7.6.3.1.2 YBR_FULL equations
        cb = -0.1687 * r - 0.3313 * g + 0.5 * b + 128
        cr = 0.5 * r - 0.4187 * g - 0.0813 * b + 128
        pairs = cols // 2
        packed = np.empty((rows, pairs, 4), np.uint8)
        packed[..., 0] = np.clip(np.rint(y[:, 0::2]), 0, 255)
        packed[..., 1] = np.clip(np.rint(y[:, 1::2]), 0, 255)
        packed[..., 2] = np.clip(np.rint((cb[:, 0::2] + cb[:, 1::2]) / 2), 0, 255)
        packed[..., 3] = np.clip(np.rint((cr[:, 0::2] + cr[:, 1::2]) / 2), 0, 255)
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.PixelData = packed.tobytes()
    elif photometric != "RGB":
        raise ValueError(f"no synthetic US image in {photometric}")
    return ds


def enhanced_mr(frames: int = 3, rows: int = 64, cols: int = 64) -> Dataset:
    """An Enhanced MR Image (PS3.3 A.36.2) with the MR Pulse Sequence module (C.8.13.4),
    which the IOD requires of an ORIGINAL image and allows otherwise."""
    ds = make_image(rows, cols, frames=frames, bits_stored=12, sop_class=ENHANCED_MR_STORAGE)
    ds.Modality = "MR"
    image_type = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.ImageType = image_type
    for keyword in ("RescaleIntercept", "RescaleSlope"):
        delattr(ds, keyword)  # MR frames carry no rescale here (C.8.13.1.1.3)
    _equipment_and_study(ds)
    del ds.Laterality, ds.PatientOrientation  # in the Frame Anatomy group instead
    _enhanced_image(ds)
    ds.AcquisitionDuration = 60.0
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.ComplexImageComponent = "MAGNITUDE"
    ds.AcquisitionContrast = "T1"
    ds.ResonantNucleus = "1H"
    ds.KSpaceFiltering = "NONE"
    ds.MagneticFieldStrength = 1.5
    ds.ApplicableSafetyStandardAgency = "IEC"
    ds.LossyImageCompression = "00"
    ds.PatientPosition = "HFS"
    ds.AcquisitionContextSequence = Sequence()
    # MR Pulse Sequence module: Type 1C, required while Image Type value 1 is ORIGINAL
    ds.PulseSequenceName = "SYNTHETIC"
    ds.MRAcquisitionType = "3D"
    ds.EchoPulseSequence = "GRADIENT"
    ds.MultiPlanarExcitation = "NO"
    ds.PhaseContrast = "NO"
    ds.TimeOfFlightContrast = "NO"
    ds.SteadyStatePulseSequence = "NONE"
    ds.EchoPlanarPulseSequence = "NO"
    ds.SaturationRecovery = "NO"
    ds.SpectrallySelectedSuppression = "NONE"
    ds.OversamplingPhase = "NONE"
    ds.GeometryOfKSpaceTraversal = "RECTILINEAR"
    ds.RectilinearPhaseEncodeReordering = "LINEAR"
    ds.SegmentedKSpaceTraversal = "SINGLE"
    ds.CoverageOfKSpace = "FULL"
    ds.NumberOfKSpaceTrajectories = 1
    _stack_dimensions(ds)

    shared = Dataset()
    frame_type = Dataset()
    frame_type.FrameType = image_type
    for keyword in ("PixelPresentation", "VolumetricProperties",
                    "VolumeBasedCalculationTechnique", "ComplexImageComponent",
                    "AcquisitionContrast"):  # fmt: skip
        setattr(frame_type, keyword, ds.get(keyword))
    shared.MRImageFrameTypeSequence = Sequence([frame_type])
    _axial_plane(shared)
    timing = Dataset()
    timing.RepetitionTime = 10.0
    timing.FlipAngle = 15.0
    timing.EchoTrainLength = 1
    timing.RFEchoTrainLength = 1
    timing.GradientEchoTrainLength = 1
    timing.GradientOutputType = "DB_DT"
    timing.GradientOutput = 10.0
    mode = Dataset()
    mode.OperatingModeType, mode.OperatingMode = "STATIC FIELD", "IEC_NORMAL"
    timing.OperatingModeSequence = Sequence([mode])
    sar = Dataset()
    sar.SpecificAbsorptionRateDefinition, sar.SpecificAbsorptionRateValue = "IEC_WHOLE_BODY", 0.1
    timing.SpecificAbsorptionRateSequence = Sequence([sar])
    shared.MRTimingAndRelatedParametersSequence = Sequence([timing])
    echo = Dataset()
    echo.EffectiveEchoTime = 5.0
    shared.MREchoSequence = Sequence([echo])
    anatomy = Dataset()
    anatomy.FrameLaterality = "U"
    anatomy.AnatomicRegionSequence = Sequence([_code("12738006", "SCT", "Brain")])
    shared.FrameAnatomySequence = Sequence([anatomy])
    averages = Dataset()
    averages.NumberOfAverages = 1
    shared.MRAveragesSequence = Sequence([averages])
    fov = Dataset()
    fov.InPlanePhaseEncodingDirection = "ROW"
    fov.MRAcquisitionFrequencyEncodingSteps = cols
    fov.MRAcquisitionPhaseEncodingStepsInPlane = rows
    fov.MRAcquisitionPhaseEncodingStepsOutOfPlane = frames
    fov.PercentSampling = 100.0
    fov.PercentPhaseFieldOfView = 100.0
    shared.MRFOVGeometrySequence = Sequence([fov])
    imaging = Dataset()
    imaging.PixelBandwidth = 200.0
    imaging.MagnetizationTransfer = "NONE"
    imaging.BloodSignalNulling = "NO"
    imaging.Tagging = "NONE"
    imaging.TransmitterFrequency = 63.9
    shared.MRImagingModifierSequence = Sequence([imaging])
    modifier = Dataset()
    modifier.InversionRecovery = "NO"
    modifier.FlowCompensation = "NONE"
    modifier.Spoiling = "RF"
    modifier.T2Preparation = "NO"
    modifier.SpectrallySelectedExcitation = "NONE"
    modifier.SpatialPresaturation = "NONE"
    modifier.PartialFourier = "NO"
    modifier.ParallelAcquisition = "NO"
    shared.MRModifierSequence = Sequence([modifier])
    receive = Dataset()
    receive.ReceiveCoilName, receive.ReceiveCoilType = "HEAD", "VOLUME"
    receive.QuadratureReceiveCoil = "YES"
    receive.ReceiveCoilManufacturerName = ""
    shared.MRReceiveCoilSequence = Sequence([receive])
    transmit = Dataset()
    transmit.TransmitCoilName, transmit.TransmitCoilType = "BODY", "VOLUME"
    transmit.TransmitCoilManufacturerName = ""
    shared.MRTransmitCoilSequence = Sequence([transmit])
    transformation = Dataset()
    transformation.RescaleIntercept, transformation.RescaleSlope = 0, 1
    transformation.RescaleType = "US"
    shared.PixelValueTransformationSequence = Sequence([transformation])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = _stacked_frames(frames)
    return ds
