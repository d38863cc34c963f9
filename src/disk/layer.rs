//! One layer of a chain: an image of any format, read through [`Image`].

use std::ops::{Deref, DerefMut};

use super::image::Image;
use super::raw::RawImage;
use super::{VhdImage, VhdxImage};

/// One layer of a chain. The variants let a chain hand out its top image
/// as what it is (`Disk::as_vhd`); everything else goes through [`Image`].
#[derive(Debug)]
pub(crate) enum Layer {
    Vhd(Box<VhdImage>),
    Vhdx(Box<VhdxImage>),
    Raw(Box<RawImage>),
}

impl Deref for Layer {
    type Target = dyn Image;

    fn deref(&self) -> &(dyn Image + 'static) {
        match self {
            Layer::Vhd(i) => &**i,
            Layer::Vhdx(i) => &**i,
            Layer::Raw(i) => &**i,
        }
    }
}

impl DerefMut for Layer {
    fn deref_mut(&mut self) -> &mut (dyn Image + 'static) {
        match self {
            Layer::Vhd(i) => &mut **i,
            Layer::Vhdx(i) => &mut **i,
            Layer::Raw(i) => &mut **i,
        }
    }
}
