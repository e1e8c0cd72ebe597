//! Wire enums with an `Unknown` case (smoltcp's `enum_with_unknown!` is the
//! model): a tag value this build does not know decodes to `Unknown(v)`, so
//! the protocol code decides what an unknown value means (refuse with a
//! clear message, skip, relay verbatim) instead of the decoder failing.

/// Declares a `Copy` enum over an integer representation with an
/// `Unknown(repr)` case, `From` conversions both ways and a [`crate::Codec`]
/// implementation.
///
/// ```
/// wanmig_wire::wire_enum! {
///     /// What a frame carries.
///     pub enum Kind(u8) {
///         /// Opens the session.
///         Hello = 1,
///         Data = 2,
///     }
/// }
/// assert_eq!(Kind::from(2), Kind::Data);
/// assert_eq!(Kind::from(9), Kind::Unknown(9));
/// assert_eq!(u8::from(Kind::Unknown(9)), 9);
/// ```
#[macro_export]
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident($repr:ty) {
            $(
                $(#[$vmeta:meta])*
                $variant:ident = $value:expr
            ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $(
                $(#[$vmeta])*
                $variant,
            )+
            /// A value this version does not know.
            Unknown($repr),
        }

        impl $name {
            /// Every known value, in declaration order.
            pub const KNOWN: &'static [$name] = &[$($name::$variant),+];
        }

        impl ::core::convert::From<$repr> for $name {
            fn from(v: $repr) -> Self {
                $(
                    if v == $value {
                        return $name::$variant;
                    }
                )+
                $name::Unknown(v)
            }
        }

        impl ::core::convert::From<$name> for $repr {
            fn from(v: $name) -> $repr {
                match v {
                    $($name::$variant => $value,)+
                    $name::Unknown(other) => other,
                }
            }
        }

        impl $crate::Codec for $name {
            fn decode(r: &mut $crate::Reader<'_>) -> ::core::result::Result<Self, $crate::UnexpectedEnd> {
                r.get::<$repr>().map($name::from)
            }
            fn encode(&self, out: &mut ::std::vec::Vec<u8>) {
                <$repr as $crate::Codec>::encode(&<$repr>::from(*self), out)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use crate::{Codec, Reader};

    crate::wire_enum! {
        enum Lane(u16) {
            OnDemand = 0,
            Background = 0x0102,
        }
    }

    #[test]
    fn known_and_unknown_values_round_trip() {
        for v in [0u16, 0x0102, 7, u16::MAX] {
            let lane = Lane::from(v);
            assert_eq!(u16::from(lane), v);
            let mut out = Vec::new();
            lane.encode(&mut out);
            assert_eq!(Reader::new(&out).get::<Lane>(), Ok(lane));
        }
        assert_eq!(Lane::from(7), Lane::Unknown(7));
        assert_eq!(Lane::KNOWN, &[Lane::OnDemand, Lane::Background]);
    }
}
