/// `get_ref`, `get_mut` and `into_inner` for a service with an `inner` field (tower-http
/// `src/macros.rs`).
#[allow(unused_macros)] // unused when every layer feature is off
macro_rules! define_inner_service_accessors {
    () => {
        /// Gets a reference to the inner service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// Gets a mutable reference to the inner service.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// Consumes `self`, returning the inner service.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}
